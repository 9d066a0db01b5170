"""Success with the demonstrations' phrasings against phrasings they never used.

    python benchmarks/phrasings.py POLICY_DIR [--episodes 50] [--seed 300000]

POLICY_DIR is a checkpoint or an export; the task is the one its training data came from. Both rows
run the same seeds (the same scenes, the same named cube); only the instruction differs. The held-out
phrasings are in tests/heldout_phrasings.py, which no demonstration or recipe reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from heldout_phrasings import HELDOUT_PHRASINGS, heldout_rephraser  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=300_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    import sims
    from vla.evaluation import evaluate
    from vla.policy import load_policy

    policy = load_policy(args.policy, device="cpu")
    env_args = policy.metadata.get("env_args", {})
    env_id, env_kwargs = env_args["env_name"], dict(env_args.get("env_kwargs", {}))
    task = sims.ENV_SPECS[env_id]["task"]
    print(f"{env_id} {env_kwargs}, {args.episodes} episodes from seed {args.seed}\n")
    print("| phrasings | success | 95% CI | examples |")
    print("|---|---|---|---|")
    for name, rephrase, examples in (
        ("demonstrated (sims/tasks.py)", None, sims.TASKS[task].phrasings),
        ("held out (tests/heldout_phrasings.py)", heldout_rephraser(task), HELDOUT_PHRASINGS[task]),
    ):
        result = evaluate(policy, env_id, args.episodes, seed=args.seed, env_kwargs=env_kwargs, workers=args.workers,
                          videos=0, progress=False, rephrase=rephrase)
        low, high = result["ci95"]
        print(f"| {name} | {result['successes']}/{result['num_episodes']} | {100 * low:.0f}-{100 * high:.0f}% | "
              f"{'; '.join(e.format(color='red') for e in examples[:2])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
