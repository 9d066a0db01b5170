"""Scripted demonstrations into the episode store, in one or several processes.

Episode i is rolled out with seed `seed + i`; failed rollouts are dropped (unless kept) and
further seeds are drawn until `episodes` are written, so the file's content depends on the seed
alone, never on the number of workers.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla.data.store import Episode, EpisodeWriter
from vla.errors import DatasetError


@dataclass(frozen=True)
class CollectionJob:
    env_id: str
    env_kwargs: dict
    noise: float = 0.0
    after_success: int = 0  # expert steps recorded after the first success
    recoveries: float = 0.0  # share of episodes whose first attempt goes wrong on purpose (sims.experts.gone_wrong)


_worker_cache: dict[str, tuple] = {}  # one environment and expert per job and process, built on first use


# Constructor arguments that are not how the demonstrations looked or acted: the id names the task, and
# rendering for videos and the episode's length are the evaluator's to choose.
NOT_SETTINGS = ("task", "render_mode", "render_size", "max_episode_steps")


def effective_settings(env, given: dict) -> dict:
    """`given`, and every other setting of the environment's constructor at the value it took, so that a store
    says what its frames were rendered with even after a default changes (Meta-World's view went from 60 to 30
    degrees: a store that recorded only what was passed was then evaluated through the new view)."""
    parameters = inspect.signature(type(env.unwrapped).__init__).parameters
    taken = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    taken.update(env.spec.kwargs if env.spec is not None else {})
    return {**{k: v for k, v in taken.items() if k not in NOT_SETTINGS}, **given}


def _make(job: CollectionJob):
    key = json.dumps([job.env_id, job.env_kwargs], sort_keys=True)
    if key not in _worker_cache:
        import gymnasium as gym

        import sims
        from sims.experts import make_expert

        env = gym.make(sims.check_env_id(job.env_id), **job.env_kwargs)
        for old, _ in _worker_cache.values():  # one rendering env per process: an old renderer collected
            old.close()                         # after a new GL context exists can blank the new one's frames
        _worker_cache.clear()
        _worker_cache[key] = (env, make_expert(env))
    return _worker_cache[key]


def rollout(job: CollectionJob, seed: int, target: str | None = None) -> Episode:
    """One expert episode with the given seed (and, optionally, the object the instruction names)."""
    from sims.experts import run_episode

    env, expert = _make(job)
    frames: dict[str, list] = {}
    actions, rewards, dones = [], [], []
    info = {}
    options = {"target": target} if target else None
    rng = np.random.default_rng([seed, *(ord(c) for c in target or "")])
    unwrapped = env.unwrapped
    for obs, action, reward, terminated, truncated, info in run_episode(env, expert, seed, noise=job.noise, rng=rng,
                                                                         options=options, after_success=job.after_success,
                                                                         recoveries=job.recoveries):
        for key, value in obs.items():
            frames.setdefault(key, []).append(value)
        # Privileged, for auxiliary losses and analysis; never a policy input.
        frames.setdefault("target_position", []).append(unwrapped.target_position)
        actions.append(action)
        rewards.append(reward)
        dones.append(terminated or truncated)
    return Episode(
        observations={k: np.stack(v) for k, v in frames.items()},
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        dones=np.asarray(dones, bool),
        attrs={
            "instruction": unwrapped.instruction,
            "task": job.env_id,
            "target": unwrapped.target,
            "seed": seed,
            "fps": unwrapped.metadata["render_fps"],
            "success": bool(info.get("is_success", False)),
            "success_step": -1 if info.get("success_step") is None else info["success_step"],
            "noise": job.noise,
            "recovery": bool(info.get("recovery", False)),
        },
    )


def _object_colors(env_id: str, env_kwargs: dict) -> list[str]:
    env, _ = _make(CollectionJob(env_id, env_kwargs))
    if not hasattr(env.unwrapped, "colors"):
        raise DatasetError(f"--all-targets needs a task whose instruction names one of several objects; {env_id} has one")
    if env.unwrapped.num_objects != len(env.unwrapped.colors):
        raise DatasetError("--all-targets needs every cube on the table (num_objects == num_colors)")
    return list(env.unwrapped.colors)


def _rollout_star(args) -> Episode:
    return rollout(*args)


def collect(
    env_id: str,
    episodes: int,
    out: str | Path,
    seed: int | None = None,
    workers: int = 1,
    keep_failures: bool = False,
    noise: float = 0.0,
    env_kwargs: dict | None = None,
    append: bool = False,
    progress: bool = True,
    max_attempts_factor: int = 4,
    all_targets: bool = False,
    targets: list[str] | None = None,
    after_success: int = 0,
    recoveries: float = 0.0,
) -> dict:
    """Write `episodes` expert episodes to `out`; returns a summary dict.

    With `all_targets`, every layout (seed) is demonstrated once per object, each episode's
    instruction naming a different one: the same first image with different instructions and
    different actions, which teaches a policy to read the instruction. `targets` limits the objects
    named to these colours (a colour held out of a task's demonstrations, for a generalization test).
    `after_success` keeps each episode going that many expert steps past its first success.
    `recoveries` is the share of episodes whose first attempt goes wrong on purpose and is recovered from
    (`sims.experts.gone_wrong`: Lift's and PickPlace's grasp misses, Push's push is aimed off): the labels are
    the expert's, so they show the recovery.
    """
    import sims
    from sims.experts import gone_wrong

    env_id = sims.check_env_id(env_id)
    if episodes < 1:
        raise DatasetError(f"--episodes must be at least 1, got {episodes}")
    if after_success < 0:
        raise DatasetError(f"--after-success must be at least 0, got {after_success}")
    if not 0.0 <= recoveries <= 1.0:
        raise DatasetError(f"--recoveries is a share of episodes in [0, 1], got {recoveries}")
    job = CollectionJob(env_id=env_id, env_kwargs=dict(env_kwargs or {}), noise=noise, after_success=after_success,
                        recoveries=recoveries)
    written = failures = attempts = 0
    outcomes: list[tuple[int, bool]] = []  # (seed, expert succeeded), in seed order
    if targets is not None and not all_targets:
        raise DatasetError("targets (--targets) goes with --all-targets")
    colors = _object_colors(env_id, job.env_kwargs) if all_targets else []
    unknown = sorted(set(targets or []) - set(colors))
    if unknown:
        raise DatasetError(f"--targets {unknown}: the scene's objects are {colors}")
    targets = [c for c in colors if targets is None or c in targets]
    env, expert = _make(job)
    if recoveries and gone_wrong(expert) is None:
        raise DatasetError(f"--recoveries needs a task whose first attempt can go wrong (sims/Push-v0, sims/Lift-v0, "
                           f"sims/PickPlace-v0); {env_id}'s expert has none")
    env_args = {"env_name": env_id, "env_kwargs": effective_settings(env, job.env_kwargs), "noise": noise,
                "after_success": after_success, "recoveries": recoveries}
    action_space = {"names": env.unwrapped.metadata.get("action_names"), "hold": env.unwrapped.metadata.get("action_hold")}
    with EpisodeWriter(out, env_args=env_args, append=append, action_space=action_space) as writer:
        if seed is None:
            seed = max(writer.existing_seeds(), default=-1) + 1
        next_seed = seed
        pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
        bar = tqdm(total=episodes, desc=f"collect {env_id}", unit="ep", disable=not progress)
        try:
            while written < episodes:
                if attempts >= episodes * max_attempts_factor:
                    raise DatasetError(
                        f"{env_id}: only {written} of {episodes} episodes succeeded in {attempts} attempts"
                    )
                seeds = range(next_seed, next_seed + max(workers * 2, 1))
                next_seed += len(seeds)
                batch = [(job, s, t) for s in seeds for t in (targets if all_targets else [None])]
                results = pool.imap(_rollout_star, batch) if pool else map(_rollout_star, batch)
                for episode in results:
                    attempts += 1
                    outcomes.append((int(episode.attrs["seed"]), bool(episode.attrs["success"])))
                    if not episode.attrs["success"]:
                        failures += 1
                        if not keep_failures:
                            continue
                    if written < episodes:
                        writer.add(episode)
                        written += 1
                        bar.update(1)
        finally:
            bar.close()
            if pool:
                pool.terminate()
        total_episodes = writer.num_episodes
    return {
        "out": str(out),
        "episodes_written": written,
        "episodes_in_file": total_episodes,
        "attempts": attempts,
        "failures": failures,
        "first_seed": seed,
        "outcomes": outcomes,
    }


def collect_suite(suite, episodes: int, out: str | Path, seed: int = 0, workers: int = 1, noise: float = 0.0,
                  env_kwargs: dict | None = None, progress: bool = True, all_targets: bool = False,
                  after_success: int = 0) -> dict:
    """`episodes` demonstrations of every task of a `vla.suites.Suite` into one store (the tasks mixed,
    each episode's `task` attribute naming its environment); returns the summary per task."""
    out = Path(out)
    kwargs = {**suite.env_kwargs, **(env_kwargs or {})}
    with EpisodeWriter(out, env_args={"suite": suite.name, "tasks": suite.tasks, "env_kwargs": kwargs,
                                      "noise": noise, "after_success": after_success}):
        pass
    tasks = {}
    for env_id in suite.tasks:
        tasks[env_id] = collect(env_id, episodes, out, seed=seed, workers=workers, noise=noise, env_kwargs=kwargs,
                                append=True, progress=progress, all_targets=all_targets, after_success=after_success)
    return {"out": str(out), "suite": suite.name, "tasks": tasks,
            "episodes_in_file": sum(t["episodes_written"] for t in tasks.values())}


def expert_success(outcomes: list[tuple[int, bool]], first_seed: int, count: int) -> tuple[int, int]:
    """(successes, episodes) of the expert over seeds first_seed .. first_seed + count - 1."""
    window = [ok for seed, ok in outcomes if first_seed <= seed < first_seed + count]
    return sum(window), len(window)
