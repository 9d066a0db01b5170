"""How precise a policy must be on Meta-World's reach: the reach expert steered to a point a fixed distance from
the goal in a random direction, on the same seeds for every distance, aimed as Meta-World's expert aims (the
hand's reference point on the goal) and as this package's does (the fingertips on the goal).

    python benchmarks/metaworld_reach_tolerance.py [--episodes 40] [--offsets 0 0.5 1 1.5 2 3 4]

Reach succeeds when the fingertips' centre (`tcp_center`) comes within 5 cm of the goal, but Meta-World's
expert drives the hand, whose reference point sits about 4.7 cm above the fingertips, to the goal: its resting
point lies on the edge of the success region, and a hand that stops a little below or beside the goal misses.
An imitation of it that misreads the goal by a centimetre therefore fails often, even when it acts exactly like
the expert otherwise. `sims.metaworld.MetaWorldExpert` shows Meta-World's policy the goal moved by the
hand-to-fingertips offset, so that its demonstrations end in the middle of the success region.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--offsets", type=float, nargs="+", default=[0, 0.5, 1, 1.5, 2, 3, 4], help="cm")
    parser.add_argument("--seed", type=int, default=100_000)
    args = parser.parse_args()

    import gymnasium as gym

    import sims  # noqa: F401  (registers the environments)
    from sims.metaworld import MetaWorldExpert
    from vla.evaluation import wilson_interval

    env = gym.make("metaworld/reach-v3", image_size=16)
    inner = env.unwrapped
    expert = MetaWorldExpert(env)
    directions = np.random.default_rng(0).normal(size=(args.episodes, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    gap = []

    def successes(offset_cm: float, aim_fingertips: bool) -> int:
        won = 0
        for episode, direction in enumerate(directions):
            env.reset(seed=args.seed + episode)
            goal = inner.raw_observation[-3:].copy()
            for _ in range(env.spec.max_episode_steps):
                gap.append(inner._env.tcp_center - inner.raw_observation[:3])
                # the expert reads the goal from the privileged observation: show it a displaced one
                inner.raw_observation[-3:] = goal + offset_cm / 100 * direction
                if not aim_fingertips:
                    inner.raw_observation[-3:] += inner._env.tcp_center - inner.raw_observation[:3]  # undone by act()
                _, _, terminated, truncated, info = env.step(expert.act())
                if terminated or truncated:
                    break
            won += info["is_success"]
        return won

    print("| aimed off the goal by | hand on the aim (Meta-World's expert) | 95% CI | fingertips on the aim (ours) | 95% CI |")
    print("|---|---|---|---|---|")
    for offset in args.offsets:
        cells = []
        for aim_fingertips in (False, True):
            won = successes(offset, aim_fingertips)
            low, high = wilson_interval(won, args.episodes)
            cells += [f"{won}/{args.episodes}", f"{100 * low:.0f}% - {100 * high:.0f}%"]
        print(f"| {offset:g} cm | " + " | ".join(cells) + " |", flush=True)
    env.close()
    dx, dy, dz = 100 * np.mean(gap, axis=0)
    print(f"\nfingertips' centre relative to the hand's reference point: x {dx:+.1f} cm, y {dy:+.1f} cm, z {dz:+.1f} cm")


if __name__ == "__main__":
    main()
