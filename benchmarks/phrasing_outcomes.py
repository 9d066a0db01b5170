"""What a policy did with each held-out phrasing of PickPlace: which task its episodes look like.

    python benchmarks/phrasing_outcomes.py POLICY [--phrasing-set 2 | --demonstrated] [--episodes 50] [--seed 300000]

The episodes are benchmarks/phrasings.py's held-out row for sims/PickPlace-v0 (the same seeds, the phrasings
cycling over them in the same order), so each phrasing's wins here are that table's. Each episode is put in the
first of these that fits, from the named cube's path (`--demonstrated`: the demonstrated phrasings' row instead,
for comparison):

- *won*: PickPlace's own success;
- *lifted in place*: the cube rose above Lift's 10 cm and was never carried 3 cm from where it lay (Lift's
  success instead of PickPlace's);
- *carried, not placed*: it rose above 10 cm, was carried, and did not end placed in the zone;
- *in the zone, not released*: the cube reached the zone and the episode still ended without PickPlace's success;
- *pushed*: the cube slid 2 cm or more without ever leaving the table (a push);
- *not moved*: the cube moved under 2 cm (Reach's hover, or a grasp that never closed);
- *other*: the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from heldout_phrasings import PHRASING_SETS, heldout_rephraser  # noqa: E402

TASK = "sims/PickPlace-v0"
OFF_TABLE = 0.01  # m above the cube's resting height: it was carried, not slid
CARRIED = 0.03  # m: the cube was taken somewhere, not only lifted
OUTCOMES = ("won", "lifted in place", "carried, not placed", "in the zone, not released", "pushed", "not moved",
            "other")


def episode_outcome(policy, env, obs: dict, instruction: str, lift_height: float, zone_radius: float) -> tuple:
    """Run the episode `env` was just reset into (its first observation `obs`), told `instruction`."""
    inner = env.unwrapped
    start = inner.object_position(inner.target).copy()
    highest, farthest, closest, in_zone, done, steps = start[2], 0.0, np.inf, False, False, 0
    while not done:
        for action in policy.act({**obs, "prompt": instruction}):
            obs, _, terminated, truncated, info = env.step(action)
            steps += 1
            cube = inner.object_position(inner.target)
            highest = max(highest, cube[2])
            farthest = max(farthest, float(np.linalg.norm(cube[:2] - start[:2])))
            closest = min(closest, float(np.linalg.norm(cube[:2] - inner.zone)))
            in_zone |= closest < zone_radius
            if done := terminated or truncated:
                break
    moved = float(np.linalg.norm(cube[:2] - start[:2]))
    where = {"closest": closest, "end": float(np.linalg.norm(cube[:2] - inner.zone)),
             "end_height": float(cube[2] - start[2]), "released": bool(inner.tcp[2] > cube[2] + 0.03), "steps": steps}
    if info["is_success"]:
        return "won", where
    if highest > lift_height:
        return ("lifted in place" if farthest < CARRIED else "carried, not placed"), where
    if in_zone:
        return "in the zone, not released", where
    if moved >= 0.02:
        return ("pushed" if highest < start[2] + OFF_TABLE else "other"), where
    return "not moved", where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy")
    parser.add_argument("--phrasing-set", type=int, choices=sorted(PHRASING_SETS), default=2)
    parser.add_argument("--demonstrated", action="store_true", help="the demonstrated phrasings instead")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=300_000)
    args = parser.parse_args()

    import gymnasium as gym

    import sims
    from sims.scene import ZONE_RADIUS
    from sims.tasks import LIFT_HEIGHT
    from vla.policy import load_policy
    from vla.suites import load_suite

    policy = load_policy(args.policy, device="cpu")
    env_kwargs = dict(load_suite("builtin").env_kwargs)  # as benchmarks/phrasings.py --suite builtin
    env = gym.make(TASK, **env_kwargs)
    rephrase = heldout_rephraser(sims.ENV_SPECS[TASK]["task"], args.phrasing_set)
    counts: dict[str, dict[str, int]] = {}
    carried = []
    for episode in range(args.episodes):
        obs, info = env.reset(seed=args.seed + episode)
        target = env.unwrapped.target
        instruction = info["instruction"] if args.demonstrated else rephrase(info["instruction"], target, episode)
        outcome, where = episode_outcome(policy, env, obs, instruction, LIFT_HEIGHT, ZONE_RADIUS - 0.01)
        if outcome == "carried, not placed":
            carried.append((args.seed + episode, instruction, where))
        phrasing = instruction.replace(target, "{color}")
        counts.setdefault(phrasing, dict.fromkeys(OUTCOMES, 0))[outcome] += 1
    env.close()
    which = "demonstrated phrasings" if args.demonstrated else f"held-out set {args.phrasing_set}"
    print(f"{TASK} {env_kwargs}, seeds {args.seed}-{args.seed + args.episodes - 1}, {which}\n")
    print("| phrasing | " + " | ".join(OUTCOMES) + " |\n|---|" + "---|" * len(OUTCOMES))
    for phrasing, row in counts.items():
        print(f"| {phrasing} | " + " | ".join(str(row[o]) for o in OUTCOMES) + " |")
    print(f"\n| carried, not placed: seed | instruction | cube to the zone's centre, closest / at the end (cm; "
          f"in the zone under {100 * (ZONE_RADIUS - 0.01):.0f}) | cube's height above the table at the end (cm) | "
          "tool 3 cm above it at the end | steps |\n|---|---|---|---|---|---|")
    for seed, instruction, where in carried:
        print(f"| {seed} | {instruction} | {100 * where['closest']:.1f} / {100 * where['end']:.1f} | "
              f"{100 * where['end_height']:.1f} | {'yes' if where['released'] else 'no'} | {where['steps']} |")


if __name__ == "__main__":
    main()
