"""Meta-World MT10 figures: rendered steps/s, the shipped experts' success, collection wall time.

    python benchmarks/metaworld_suite.py [--size 96] [--seeds 50] [--workers 2]

Rendered steps/s: env.step with a random action and a render of the corner camera at --size, one
process, against physics alone (the same steps without rendering any camera). Experts: Meta-World's
own scripted policies (metaworld.policies) on seeds 0..seeds-1, each seed its own random layout,
through `vla collect` (which keeps the successful episodes), timed for the whole suite.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np

import sims  # noqa: F401  (registers metaworld/<task>)
from vla.data.collect import collect, expert_success
from vla.suites import load_suite


def steps_per_second(env_id: str, size: int, render: bool, steps: int = 300) -> float:
    env = gym.make(env_id, image_size=size).unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        if render:
            _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 4))
        else:  # the physics and Meta-World's own bookkeeping, no camera
            env.raw_observation, *_ = env._env.step(rng.uniform(-1, 1, 4))
            terminated = truncated = False
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    suite = load_suite("metaworld-mt10")
    print(f"| task | rendered steps/s at {args.size} px | physics only | expert success, seeds 0..{args.seeds - 1} "
          f"| collection s ({args.workers} workers) |")
    print("|---|---|---|---|---|")
    total_ok = total_n = 0
    wall = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in suite.tasks:
            rendered = steps_per_second(env_id, args.size, True)
            physics = steps_per_second(env_id, args.size, False)
            start = time.perf_counter()
            summary = collect(env_id, episodes=args.seeds, out=f"{tmp}/{env_id.replace('/', '_')}.hdf5", seed=0,
                              workers=args.workers, env_kwargs={"image_size": args.size}, progress=False)
            elapsed = time.perf_counter() - start
            wall += elapsed
            ok, n = expert_success(summary["outcomes"], 0, args.seeds)
            total_ok, total_n = total_ok + ok, total_n + n
            print(f"| {env_id} | {rendered:.0f} | {physics:.0f} | {ok}/{n} | {elapsed:.0f} |", flush=True)
    print(f"| **MT10** | | | **{total_ok}/{total_n}** | **{wall:.0f}** |")


if __name__ == "__main__":
    main()
