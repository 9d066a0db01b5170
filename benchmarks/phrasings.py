"""Success with the demonstrations' phrasings against phrasings they never used.

    python benchmarks/phrasings.py POLICY_DIR [--suite builtin] [--tasks sims/Reach-v0,...] [--episodes 50]
                                   [--seed 300000] [--workers 2] [--json ROWS.json] [--phrasing-set 1]

POLICY_DIR is a checkpoint or an export. Without --suite the task is the one its training data came from;
with it, every task of the suite (a multi-task policy). For each task both rows run the same seeds (the same
scenes, the same named cube); only the instruction differs. The held-out phrasings are in
tests/heldout_phrasings.py (set 1, or --phrasing-set 2 to 5, the later sets), which no demonstration, recipe or
normalization table reads. A second table breaks each row down by phrasing (the phrasings cycle over the
episodes) and, when the policy has a lexicon (`vla lexicon`), says how it reads each one.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from heldout_phrasings import PHRASING_SETS, heldout_rephraser  # noqa: E402


def by_phrasing(episodes: list[dict]) -> list[tuple[str, int, int]]:
    """(phrasing with its colour as {color}, successes, episodes), in the order the phrasings first ran."""
    counts: dict[str, list[int]] = {}
    for episode in episodes:
        phrasing = episode["instruction"].replace(episode["target"], "{color}")
        counts.setdefault(phrasing, [0, 0])
        counts[phrasing][0] += int(episode["success"])
        counts[phrasing][1] += 1
    return [(phrasing, successes, total) for phrasing, (successes, total) in counts.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy")
    parser.add_argument("--suite", default=None, help="evaluate every task of this suite (configs/suites/)")
    parser.add_argument("--tasks", default=None, help="only these of the suite's tasks (comma-separated ids)")
    parser.add_argument("--episodes", type=int, default=50, help="per task and phrasing set")
    parser.add_argument("--seed", type=int, default=300_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--phrasing-set", type=int, choices=sorted(PHRASING_SETS), default=1,
                        help="which held-out set of tests/heldout_phrasings.py")
    args = parser.parse_args()

    import sims
    from policies.lexicon import Lexicon
    from policies.preprocess import PromptTokenizer
    from vla.evaluation import evaluate, format_targets
    from vla.policy import load_policy
    from vla.training.checkpoints import resolve_policy_dir

    policy = load_policy(args.policy, device="cpu")
    if args.suite:
        from vla.suites import load_suite

        suite = load_suite(args.suite)
        env_ids, env_kwargs = suite.tasks, dict(suite.env_kwargs)
    else:
        env_args = policy.metadata.get("env_args", {})
        env_ids, env_kwargs = [env_args["env_name"]], dict(env_args.get("env_kwargs", {}))
    if args.tasks:
        unknown = sorted(set(args.tasks.split(",")) - set(env_ids))
        if unknown:
            parser.error(f"--tasks {unknown} not among {env_ids}")
        env_ids = [e for e in env_ids if e in args.tasks.split(",")]
    print(f"{', '.join(env_ids)} {env_kwargs}, {args.episodes} episodes per row from seed {args.seed}, "
          f"held-out set {args.phrasing_set}\n")
    print("| task | phrasings | success | 95% CI | per target | examples |")
    print("|---|---|---|---|---|---|")
    rows, per_phrasing = [], []
    for env_id in env_ids:
        task = sims.ENV_SPECS[env_id]["task"]
        for name, rephrase, examples in (
            ("demonstrated (sims/tasks.py)", None, sims.TASKS[task].phrasings),
            (f"held out (tests/heldout_phrasings.py, set {args.phrasing_set})",
             heldout_rephraser(task, args.phrasing_set), PHRASING_SETS[args.phrasing_set][task]),
        ):
            result = evaluate(policy, env_id, args.episodes, seed=args.seed, env_kwargs=env_kwargs,
                              workers=args.workers, videos=0, progress=False, rephrase=rephrase)
            low, high = result["ci95"]
            rows.append({"task": env_id, "phrasings": name.split(" (")[0], "successes": result["successes"],
                         "episodes": result["num_episodes"], "ci95": [low, high]})
            per_phrasing += [(env_id, *row) for row in by_phrasing(result["episodes"])]
            targets = format_targets(result["per_target"])
            print(f"| {env_id} | {name} | {result['successes']}/{result['num_episodes']} | {100 * low:.0f}-{100 * high:.0f}% "
                  f"| {targets} | {'; '.join(e.format(color='red') for e in examples[:2])} |", flush=True)
    lexicon = Lexicon.beside(resolve_policy_dir(args.policy) / "tokenizer.json")
    print("\n| task | phrasing | success |" + (" read as (lexicon.json) |\n|---|---|---|---|" if lexicon else "\n|---|---|---|"))
    for env_id, phrasing, successes, episodes in per_phrasing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_as = (f" {lexicon.rewrite(PromptTokenizer.clean(phrasing.format(color='red'))).replace('red', '{color}')} |"
                       if lexicon else "")
        print(f"| {env_id} | {phrasing} | {successes}/{episodes} |{read_as}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
