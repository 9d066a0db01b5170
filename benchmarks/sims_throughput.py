"""Simulation figures: rendered control steps per second, collection throughput, scripted experts.

    python benchmarks/sims_throughput.py [--episodes 40] [--expert-seeds 100]

Prints a table. Steps are full env.step calls (physics at 500 Hz for one 10 Hz control step, then
a 128 px render of the front camera). Experts: success and mean episode length on seeds 0..N-1 at the
default settings (tests/test_sims.py asserts at least 95 of 100).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np

import sims
from sims.experts import make_expert, run_episode
from vla.data.collect import collect


def steps_per_second(env_id: str, steps: int = 1000, **kwargs) -> float:
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 4))
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def episodes_per_minute(env_id: str, episodes: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        collect(env_id, episodes=episodes, out=f"{tmp}/x.hdf5", seed=0, workers=workers, progress=False)
        return episodes / (time.perf_counter() - start) * 60


def expert_figures(env_id: str, seeds: int) -> tuple[int, float]:
    """(successes, mean steps) of the scripted expert on seeds 0 .. seeds-1."""
    env = gym.make(env_id)
    expert = make_expert(env)
    successes, steps = 0, []
    for seed in range(seeds):
        n = 0
        for *_, info in run_episode(env, expert, seed):
            n += 1
        successes += info["is_success"]
        steps.append(n)
    env.close()
    return successes, float(np.mean(steps))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--expert-seeds", type=int, default=100)
    args = parser.parse_args()
    print("| env | steps/s, 128 px | + wrist camera | episodes/min, 1 worker | 2 workers | expert success | "
          "expert steps |")
    print("|---|---|---|---|---|---|---|")
    for env_id in sims.ENV_SPECS:
        plain = steps_per_second(env_id)
        wrist = steps_per_second(env_id, wrist_camera=True)
        one = episodes_per_minute(env_id, args.episodes, 1)
        two = episodes_per_minute(env_id, args.episodes, 2)
        ok, steps = expert_figures(env_id, args.expert_seeds)
        print(f"| {env_id} | {plain:.0f} | {wrist:.0f} | {one:,.0f} | {two:,.0f} | {ok}/{args.expert_seeds} | {steps:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
