"""Pipelined chunks against waiting for each chunk, with a policy slower than a tick.

    python benchmarks/pipelining.py EXPORT_DIR [--episodes 30] [--delay-ticks 1.5] [--seed 400000]
                                    [--task sims/PickPlace-v0 --env-kw layout=random ...]

Runs the exported policy in the real-time control loop on its simulated task (`vla deploy`; `--task` picks
one task of a multi-task policy, `--env-kw` its settings), three
ways on the same seeds: as it is; behind an injected delay of `delay-ticks` periods per decision with
the next chunk asked for only when the current one is used up (`--lead-ticks 0`); and with the same
delay, pipelined (the next inference starts while the current chunk still has steps left). Prints
success, idle ticks (the robot held, after its first action), chunk switches and the largest and mean
change of the action at a switch, and actions dropped because their ticks had passed.
"""

from __future__ import annotations

import argparse
import sys
import time

from policies.onnx_policy import OnnxPolicy


class DelayedPolicy:
    """Another policy, `delay_s` slower per decision (a bigger model, a remote GPU)."""

    def __init__(self, policy, delay_s: float):
        self.policy, self.delay_s = policy, delay_s
        self.metadata = policy.metadata

    def reset(self) -> None:
        self.policy.reset()

    def act(self, observation: dict):
        started = time.perf_counter()
        actions = self.policy.act(observation)
        time.sleep(max(0.0, self.delay_s - (time.perf_counter() - started)))
        return actions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--delay-ticks", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=400_000)
    parser.add_argument("--task", default=None, help="default: the task the training data came from")
    parser.add_argument("--env-kw", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from vla.cli import _parse_env_kwargs
    from vla.deploy import deploy

    policy = OnnxPolicy(args.export, device="cpu")
    rate = float(policy.metadata["control_hz"])
    env_id = args.task or policy.metadata["env_args"]["env_name"]
    env_kwargs = _parse_env_kwargs(args.env_kw)
    delay = args.delay_ticks / rate
    runs = [("as exported", policy, None),
            (f"+{1000 * delay:.0f} ms per decision, wait for each chunk", DelayedPolicy(policy, delay), 0),
            (f"+{1000 * delay:.0f} ms per decision, pipelined", DelayedPolicy(policy, delay), None)]
    print(f"{env_id} {env_kwargs or ''} at {rate:g} Hz, chunk {policy.metadata['chunk_size']}, {args.episodes} episodes from seed "
          f"{args.seed}\n")
    print("| policy | success | decision p50 | lead (ticks) | idle ticks | idle / episode | start-up ticks | "
          "chunk switches | largest jump at a switch | mean jump | dropped actions |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runner, lead in runs:
        s = deploy(env_id, rate_hz=rate, episodes=args.episodes, seed=args.seed, policy=runner, realtime=True,
                   lead_ticks=lead, env_kwargs=env_kwargs)
        print(f"| {name} | {s['successes']}/{s['num_episodes']} | {s['policy_p50_ms']:.0f} ms | {s['lead_ticks']} | "
              f"{s['holds']} | {s['holds'] / s['num_episodes']:.1f} | {s['startup_ticks']} | {s['chunk_switches']} | "
              f"{s['boundary_jump_max']:.3f} | {s['boundary_jump_mean']:.3f} | {s['dropped_actions']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
