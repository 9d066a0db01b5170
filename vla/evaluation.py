"""Roll a policy out in simulation: success rate with a Wilson interval, per-target breakdown, videos.

Any `Policy` works (a PyTorch checkpoint, an exported ONNX directory, a remote server). Episodes
run in W vectorized environments (one process each when W > 1); the policy answers all
environments that need a new chunk in one batched call.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from tqdm import tqdm

from policies.base import act_batch
from policies.chunking import ChunkExecutor
from vla.data.store import env_kwargs_for

DEFAULT_EVAL_SEED = 100_000  # demonstrations use small seeds; evaluation starts far from them


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _env_factory(env_id: str, env_kwargs: dict):
    def make():
        import sims  # noqa: F401  (registers the environments in worker processes)

        return gym.make(env_id, **env_kwargs)

    return make


def evaluate(
    policy,
    env_id: str,
    episodes: int,
    seed: int = DEFAULT_EVAL_SEED,
    env_kwargs: dict | None = None,
    workers: int = 1,
    execute: int | None = None,
    chunk_mode: str = "receding",
    out_dir: str | Path | None = None,
    videos: int = 2,
    progress: bool = True,
    rephrase: Callable[[str, str, int], str] | None = None,
) -> dict:
    """Run `episodes` episodes with seeds seed, seed+1, ...; returns (and writes) the eval summary.

    `rephrase(instruction, target, episode) -> instruction` replaces the env's instruction (phrasings
    the demonstrations never used); the summary records what the policy was told."""
    import sims

    env_id = sims.check_env_id(env_id)
    env_kwargs = dict(env_kwargs or {})
    if videos:
        env_kwargs.setdefault("render_mode", "rgb_array")
        env_kwargs.setdefault("render_size", max(256, env_kwargs.get("image_size", 128)))
    factories = [_env_factory(env_id, env_kwargs) for _ in range(min(workers, episodes))]
    if len(factories) > 1:
        # Spawned, not forked: a forked worker inherits this process's GL contexts and torch's threads,
        # and a child of a process that has rendered with EGL can hang in its first reset.
        envs = gym.vector.AsyncVectorEnv(factories, autoreset_mode=AutoresetMode.DISABLED, context="spawn")
    else:
        envs = gym.vector.SyncVectorEnv(factories, autoreset_mode=AutoresetMode.DISABLED)
    n_envs = envs.num_envs
    executors = [ChunkExecutor(chunk_mode, execute) for _ in range(n_envs)]

    seeds = [seed + i for i in range(episodes)]
    slot_episode = list(range(n_envs))  # which episode each env runs; -1 when idle
    obs, info = envs.reset(seed=seeds[:n_envs])
    targets = list(info["target"])

    def told(instruction: str, target: str, episode: int) -> str:
        return rephrase(str(instruction), str(target), episode) if rephrase else str(instruction)

    instructions = [told(info["instruction"][i], targets[i], i) for i in range(n_envs)]
    next_episode = n_envs
    steps = np.zeros(n_envs, int)
    frames: dict[int, list] = defaultdict(list)
    results: list[dict] = []
    policy_seconds, policy_calls = 0.0, 0
    bar = tqdm(total=episodes, desc=f"eval {env_id}", unit="ep", disable=not progress)
    policy.reset()
    try:
        while len(results) < episodes:
            active = [i for i in range(n_envs) if slot_episode[i] >= 0]
            asking = [i for i in active if executors[i].needs_chunk(steps[i])]
            if asking:
                observations = [{**{key: value[i] for key, value in obs.items()}, "prompt": instructions[i]}
                                for i in asking]
                start = time.perf_counter()
                chunks = act_batch(policy, observations)
                policy_seconds += time.perf_counter() - start
                policy_calls += 1
                for i, chunk in zip(asking, chunks):
                    executors[i].add_chunk(chunk, observed_at=steps[i])
            actions = np.zeros((n_envs, envs.single_action_space.shape[0]), np.float32)
            for i in active:
                actions[i] = executors[i].action(steps[i])
            if any(slot_episode[i] < videos for i in active):
                rendered = envs.call("render")
                for i in active:
                    if slot_episode[i] < videos:
                        frames[slot_episode[i]].append(rendered[i])
            obs, _, terminated, truncated, info = envs.step(actions)
            steps += 1
            ended = terminated | truncated
            finished = [i for i in active if ended[i]]
            # An idle env (no episode left for it) is stepped with the others; when it ends, it is reset
            # too, since stepping an env past its end is an error in some (Meta-World's).
            idle_ended = [i for i in range(n_envs) if slot_episode[i] < 0 and ended[i]]
            if not finished and not idle_ended:
                continue
            reset_mask = np.zeros(n_envs, bool)
            reset_seeds: list[int | None] = [None] * n_envs
            for i in idle_ended:
                reset_mask[i] = True
            for i in finished:
                results.append({
                    "episode": slot_episode[i],
                    "seed": seeds[slot_episode[i]],
                    "success": bool(info["is_success"][i]),
                    "steps": int(steps[i]),
                    "instruction": instructions[i],
                    "target": targets[i],
                })
                bar.update(1)
                if slot_episode[i] < videos:
                    frames[slot_episode[i]].append(envs.call("render")[i])
                reset_mask[i] = True
                if next_episode < episodes:
                    slot_episode[i] = next_episode
                    reset_seeds[i] = seeds[next_episode]
                    next_episode += 1
                else:
                    slot_episode[i] = -1
                steps[i] = 0
                executors[i].reset()
            if reset_mask.any():
                new_obs, new_info = envs.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
                for key in obs:
                    obs[key][reset_mask] = new_obs[key][reset_mask]
                for i in np.flatnonzero(reset_mask):
                    if slot_episode[i] < 0:
                        continue
                    targets[i] = new_info["target"][i]
                    instructions[i] = told(new_info["instruction"][i], targets[i], slot_episode[i])
    finally:
        bar.close()
        envs.close()

    results.sort(key=lambda r: r["episode"])
    summary = summarize(results)
    summary.update({
        "env_id": env_id,
        "env_kwargs": {k: v for k, v in env_kwargs.items() if k not in ("render_size", "render_mode")},
        "first_seed": seed,
        "policy": dict(getattr(policy, "metadata", {})),
        "chunk_mode": chunk_mode,
        "execute": execute,
        "policy_ms_per_call": 1000 * policy_seconds / max(policy_calls, 1),
    })
    if out_dir is not None:
        summary["videos"] = _write_outputs(summary, frames, results, Path(out_dir), fps=10)
    return summary


def evaluate_suite(policy, suite, episodes: int, seed: int = DEFAULT_EVAL_SEED, env_kwargs: dict | None = None,
                   workers: int = 1, execute: int | None = None, chunk_mode: str = "receding",
                   out_dir: str | Path | None = None, videos: int = 2, progress: bool = True, rephrase=None) -> dict:
    """Every task of a `vla.suites.Suite` on the same seeds; one summary:

        tasks: {env id: {success_rate, ci95, successes, num_episodes, mean_steps, seeds: [first, last],
                         per_target (where the instruction names one of several objects)}},
        average_success_rate, difficulty: {bucket: mean success}, reference (the suite's published figures).
    Each task's own eval.json and videos go to OUT/<task>/.

    A task's environment takes the suite's settings, then `env_kwargs`; what both leave open is as the
    policy's data was collected (its cameras, say), so a policy demonstrated with a wrist camera is
    evaluated with one. The settings each task ran with are in `task_env_kwargs`.
    """
    demonstrated = getattr(policy, "metadata", {}).get("env_args", {})
    tasks, details, task_env_kwargs = {}, {}, {}
    for env_id in suite.tasks:
        kwargs = {**env_kwargs_for(demonstrated, env_id), **suite.env_kwargs_of(env_id), **(env_kwargs or {})}
        task_env_kwargs[env_id] = kwargs
        task_dir = Path(out_dir) / env_id.replace("/", "_") if out_dir is not None else None
        result = evaluate(policy, env_id, episodes, seed=seed, env_kwargs=kwargs, workers=workers, execute=execute,
                          chunk_mode=chunk_mode, out_dir=task_dir, videos=videos, progress=progress,
                          rephrase=rephrase(env_id) if rephrase else None)
        tasks[env_id] = {k: result[k] for k in ("success_rate", "ci95", "successes", "num_episodes", "mean_steps")}
        tasks[env_id]["seeds"] = [seed, seed + episodes - 1]
        if len(result["per_target"]) > 1:  # tasks whose instruction names one of several objects
            tasks[env_id]["per_target"] = result["per_target"]
        details[env_id] = result
    rates = [t["success_rate"] for t in tasks.values()]
    summary = {
        "suite": suite.name,
        "tasks": tasks,
        "average_success_rate": float(np.mean(rates)),
        "difficulty": {bucket: float(np.mean([tasks[t]["success_rate"] for t in members]))
                       for bucket, members in suite.difficulty.items()},
        "reference": suite.reference,
        "env_kwargs": {**suite.env_kwargs, **(env_kwargs or {})},
        "task_env_kwargs": task_env_kwargs,
        "policy": dict(getattr(policy, "metadata", {})),
        "policy_ms_per_call": float(np.mean([d["policy_ms_per_call"] for d in details.values()])),
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(out_dir) / ".eval.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(Path(out_dir) / "eval.json")
    return summary


def format_targets(per_target: dict) -> str:
    """"blue 11/11, green 20/20, red 19/19" from a summary's per_target."""
    return ", ".join(f"{target} {row['successes']}/{row['episodes']}" for target, row in per_target.items())


def format_suite(summary: dict) -> str:
    lines = [f"{summary['suite']}: average success {summary['average_success_rate']:.1%}"]
    for env_id, row in summary["tasks"].items():
        low, high = row["ci95"]
        targets = format_targets(row.get("per_target", {}))
        lines.append(f"  {env_id:34s} {row['successes']:3d}/{row['num_episodes']:<3d} {row['success_rate']:6.1%} "
                     f"(95% CI {low:.0%}-{high:.0%}), {row['mean_steps']:.0f} steps" + (f"; {targets}" if targets else ""))
    for bucket, rate in summary["difficulty"].items():
        lines.append(f"  {bucket:8s} {rate:.1%}")
    return "\n".join(lines)


def summarize(results: list[dict]) -> dict:
    n = len(results)
    successes = sum(r["success"] for r in results)
    low, high = wilson_interval(successes, n)
    per_target: dict[str, dict] = {}
    for target in sorted({r["target"] for r in results}):
        rows = [r for r in results if r["target"] == target]
        k = sum(r["success"] for r in rows)
        per_target[target] = {"episodes": len(rows), "successes": k, "success_rate": k / len(rows),
                              "ci95": list(wilson_interval(k, len(rows)))}
    return {
        "success_rate": successes / n if n else 0.0,
        "ci95": [low, high],
        "successes": successes,
        "num_episodes": n,
        "mean_steps": float(np.mean([r["steps"] for r in results])) if results else 0.0,
        "per_target": per_target,
        "episodes": results,
    }


def _write_outputs(summary: dict, frames: dict, results: list[dict], out_dir: Path, fps: float) -> list[str]:
    from vla.data.inspect import write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for episode, episode_frames in sorted(frames.items()):
        row = results[episode]
        name = f"episode_{episode:03d}_{'success' if row['success'] else 'failure'}.mp4"
        write_video(np.stack(episode_frames), out_dir / name, fps=fps, caption=row["instruction"], scale=1)
        names.append(name)
    tmp = out_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps({**summary, "videos": names}, indent=2))
    tmp.replace(out_dir / "eval.json")
    return names


def format_eval(summary: dict) -> str:
    low, high = summary["ci95"]
    lines = [f"{summary['env_id']}: success {summary['successes']}/{summary['num_episodes']} = "
             f"{summary['success_rate']:.1%} (95% CI {low:.1%}-{high:.1%}), mean {summary['mean_steps']:.1f} steps, "
             f"policy {summary['policy_ms_per_call']:.1f} ms/call"]
    for target, row in summary["per_target"].items():
        lines.append(f"  {target:8s} {row['successes']:3d}/{row['episodes']:<3d} {row['success_rate']:.0%}")
    return "\n".join(lines)
