"""A training run's learning curve: the success of each evaluation during training, per task, against
training time (simulation evaluations apart), from the run's own metrics.jsonl.

    python benchmarks/learning_curve.py RUN_DIR [RUN_DIR ...]

Prints one markdown table per run: step, minutes of training so far, then the success rate of every task
the evaluation reported (a suite's tasks, or the one task), with the episodes per evaluation from the run's
recipe (config.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def curve(run: Path) -> tuple[list[str], list[dict], int]:
    """-> (task names, one row per evaluation {step, minutes, rates}, episodes per evaluation)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    minutes_at = {r["step"]: r["elapsed_s"] / 60 for r in rows if "elapsed_s" in r}
    evaluations = [r for r in rows if "eval_success_rate" in r]
    tasks = sorted({k.removeprefix("eval_success_rate/") for r in evaluations for k in r
                    if k.startswith("eval_success_rate/")})
    episodes = int(yaml.safe_load((run / "config.yaml").read_text()).get("eval", {}).get("episodes", 0))
    table = []
    for r in evaluations:
        rates = {t: r[f"eval_success_rate/{t}"] for t in tasks} if tasks else {"success": r["eval_success_rate"]}
        table.append({"step": r["step"], "minutes": minutes_at.get(r["step"]), "rates": rates,
                      "average": r["eval_success_rate"]})
    return tasks or ["success"], table, episodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        tasks, table, episodes = curve(run)
        print(f"\n{run}: {episodes} episodes per task and evaluation\n")
        short = [t.split("/")[-1] for t in tasks]
        print("| step | training min | " + " | ".join(short) + (" | average |" if len(tasks) > 1 else " |"))
        print("|---|---|" + "---|" * (len(tasks) + (len(tasks) > 1)))
        for row in table:
            minutes = f"{row['minutes']:.1f}" if row["minutes"] is not None else ""
            cells = [f"{round(row['rates'][t] * episodes)}/{episodes}" if episodes else f"{row['rates'][t]:.2f}"
                     for t in tasks]
            if len(tasks) > 1:
                cells.append(f"{100 * row['average']:.0f}%")
            print(f"| {row['step']} | {minutes} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
