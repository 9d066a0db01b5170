"""Fault injection in the control loop: what it does for each fault, and how long until robot.stop().

    python benchmarks/fault_stops.py [--repeats 5]

Runs the scenarios of tests/faults.py (a fake robot and a fake policy that fail in the ways real ones
do; tests/test_faults.py asserts the same runs) at 50 Hz with a watchdog of 3 ticks (a 60 ms budget),
and prints, per fault, the stop reason and the time from the fault to stop(), worst of the repeats.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from faults import BUDGET_S, RATE_HZ, SCENARIOS, WATCHDOG_TICKS, run_scenario  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{RATE_HZ:g} Hz, watchdog {WATCHDOG_TICKS} ticks = {1000 * BUDGET_S:.0f} ms budget, "
          f"worst of {args.repeats} runs\n")
    print(f"| fault | what the loop does | stop reason | time to stop() |")
    print("|---|---|---|---|")
    for scenario in SCENARIOS:
        worst, reason = 0.0, ""
        for _ in range(args.repeats):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report, robot, _, elapsed = run_scenario(scenario)
            if robot.stop_calls == 0 or elapsed is None:
                print(f"| {scenario.name} | NOT STOPPED | | |")
                return 1
            worst = max(worst, elapsed)
            reason = report.stop_reason if report is not None else "KeyboardInterrupt re-raised"
        print(f"| {scenario.name} | {scenario.does} | {reason.split(';')[0]} | {1000 * worst:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
