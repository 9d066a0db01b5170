"""Simulation figures: rendered control steps per second and collection throughput.

    python benchmarks/sims_throughput.py [--episodes 40]

Prints a table. Steps are full env.step calls (physics at 500 Hz for one 10 Hz control step, then
a 128 px render of the front camera).
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=40)
    args = parser.parse_args()
    print(f"{'env':22s} {'steps/s 128px':>14s} {'steps/s +wrist':>15s} {'ep/min 1 worker':>16s} {'ep/min 2 workers':>17s}")
    for env_id in sims.ENV_SPECS:
        plain = steps_per_second(env_id)
        wrist = steps_per_second(env_id, wrist_camera=True)
        one = episodes_per_minute(env_id, args.episodes, 1)
        two = episodes_per_minute(env_id, args.episodes, 2)
        print(f"{env_id:22s} {plain:14.0f} {wrist:15.0f} {one:16.0f} {two:17.0f}")


if __name__ == "__main__":
    main()
