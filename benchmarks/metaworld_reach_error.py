"""Where a policy's hand ends relative to Meta-World reach's goal, per world axis and along the front camera's
line of sight: is a miss across the image, or in depth?

    python benchmarks/metaworld_reach_error.py POLICY_DIR [--episodes 12] [--seed 100000] [--store DEMOS]
                                               [--hand-at 20 40 80 200]

POLICY_DIR is a checkpoint or an export of a policy trained on metaworld/reach-v3 (alone or in MT10).
Each episode runs every action of each chunk until success or Meta-World's 500 steps; the hand and the goal
are read from the environment's privileged 39-d observation (first and last three values). x, y and z are the
world's axes (z up); corner2 looks along about (-0.75, 0.46, -0.48), so its line of sight mixes all three and
"depth" is the error's component along it. Success itself is judged at the fingertips, about 5 cm below the
hand (benchmarks/metaworld_reach_tolerance.py). With `--store` (the demonstrations the policy was trained on,
whose statistics standardized its auxiliary target) and a checkpoint, a last column says how far the policy's
auxiliary head places the goal from where it is in the first frame: whether a miss starts from a misread goal.
`--hand-at` adds a table of where the hand is at those steps of each missed episode: whether misses with different
goals follow one path (actions that ignore the goal).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import aux_reader  # noqa: E402


def _cm(point: np.ndarray) -> str:
    return ", ".join(f"{100 * value:.1f}" for value in point)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy")
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--store", help="the policy's demonstrations (for its auxiliary head)")
    parser.add_argument("--hand-at", type=int, nargs="*", default=[], help="steps at which to show a miss's hand")
    args = parser.parse_args()

    import gymnasium as gym

    import sims  # noqa: F401  (registers metaworld/ ids)
    from vla.data.store import env_kwargs_for
    from vla.policy import TorchPolicy, load_policy

    policy = load_policy(args.policy, device="cpu")
    read_goal = aux_reader(policy.model, args.store) if isinstance(policy, TorchPolicy) else None  # not an export
    # The camera settings the policy was demonstrated with (image size, field of view), as `vla eval` uses them
    env = gym.make("metaworld/reach-v3", **env_kwargs_for(policy.metadata.get("env_args", {}), "metaworld/reach-v3"))
    import mujoco

    from sims.metaworld import FRONT_CAMERA

    inner = env.unwrapped
    camera = mujoco.mj_name2id(inner._env.model, mujoco.mjtObj.mjOBJ_CAMERA, FRONT_CAMERA)
    print("| seed | success | steps | distance | x error | y error | z error (height) | depth error "
          "| goal read off by (first frame) |")
    print("|---|---|---|---|---|---|---|---|---|")
    misses, misreads = [], {True: [], False: []}
    paths = []  # (seed, goal, the hand at each --hand-at step) of each miss
    for seed in range(args.seed, args.seed + args.episodes):
        obs, info = env.reset(seed=seed)
        policy.reset()
        misread = np.nan
        if read_goal is not None:
            misread = np.linalg.norm(read_goal({**obs, "prompt": info["instruction"]}) - inner.raw_observation[-3:])
        steps, done, hand = 0, False, {}
        while not done:
            for action in policy.act({**obs, "prompt": info["instruction"]}):
                obs, _, terminated, truncated, info = env.step(action)
                steps += 1
                if steps in args.hand_at:
                    hand[steps] = inner.raw_observation[:3].copy()
                done = terminated or truncated
                if done:
                    break
        raw = inner.raw_observation
        error = raw[:3] - raw[-3:]
        line_of_sight = -inner._env.data.cam_xmat[camera].reshape(3, 3)[:, 2]
        error = np.append(error, error @ line_of_sight)
        if not info["is_success"]:
            misses.append(np.abs(error))
            paths.append((seed, raw[-3:], hand))
        misreads[bool(info["is_success"])].append(misread)
        read = "-" if np.isnan(misread) else f"{100 * misread:.1f} cm"
        print(f"| {seed} | {info['is_success']} | {steps} | {100 * np.linalg.norm(error[:3]):.1f} cm | "
              + " | ".join(f"{100 * e:+.1f} cm" for e in error) + f" | {read} |", flush=True)
    env.close()
    if args.hand_at and paths:
        print("\n| missed seed | goal (x, y, z) cm | " + " | ".join(f"hand at step {s}" for s in args.hand_at) + " |")
        print("|---|---|" + "---|" * len(args.hand_at))
        for seed, goal, hand in paths:
            cells = [_cm(hand[step]) if step in hand else "-" for step in args.hand_at]
            print(f"| {seed} | {_cm(goal)} | " + " | ".join(cells) + " |")
    if misses:
        mean = 100 * np.mean(misses, axis=0)
        print(f"\n{len(misses)} of {args.episodes} missed; mean |error| of the misses: x {mean[0]:.1f} cm, "
              f"y {mean[1]:.1f} cm, z {mean[2]:.1f} cm, along corner2's line of sight {mean[3]:.1f} cm")
    if read_goal is not None:
        for success, label in ((True, "successes"), (False, "misses")):
            if misreads[success]:
                print(f"auxiliary head's first reading of the goal, median error over the {label}: "
                      f"{100 * np.median(misreads[success]):.1f} cm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
