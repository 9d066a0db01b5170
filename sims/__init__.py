"""MuJoCo tabletop worlds behind the Gymnasium API, and Meta-World's tasks when its extra is installed.

    import gymnasium as gym
    import sims  # registers the environments
    env = gym.make("sims/Reach-v0", render_mode="rgb_array")
    env = gym.make("metaworld/reach-v3")   # with `pip install 'vla-robotics[metaworld]'`
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym

from sims.env import ACTION_DIM, STATE_DIM, TabletopEnv
from sims.tasks import TASKS

# Registered ids and the keyword arguments that define them. Any keyword can be overridden in gym.make, and so
# can an episode's length: gym.make(id, max_episode_steps=N) (Gymnasium's TimeLimit; the envs keep no limit
# of their own, so a longer one than the task's is not cut short).
ENV_SPECS: dict[str, dict] = {
    "sims/Reach-v0": {"task": "reach"},
    "sims/Push-v0": {"task": "push"},
    "sims/Lift-v0": {"task": "lift"},
    "sims/PickPlace-v0": {"task": "pick_place"},
}


METAWORLD_PREFIX = "metaworld/"
METAWORLD_EXTRA = "pip install 'vla-robotics[metaworld]'"


class MissingExtra(ValueError):
    """An environment needs an extra that is not installed; the message says which."""


def metaworld_available() -> bool:
    return importlib.util.find_spec("metaworld") is not None


def _register() -> None:
    for env_id, kwargs in ENV_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="sims.env:TabletopEnv", kwargs=kwargs,
                         max_episode_steps=TASKS[kwargs["task"]].max_steps)
    if metaworld_available():
        from sims.metaworld import MAX_STEPS, task_names

        for task in task_names():
            if METAWORLD_PREFIX + task not in gym.registry:
                gym.register(id=METAWORLD_PREFIX + task, entry_point="sims.metaworld:MetaWorldEnv",
                             kwargs={"task": task}, max_episode_steps=MAX_STEPS)


def check_env_id(env_id: str) -> str:
    """Accepts `sims/Reach-v0` (or the short `Reach-v0`) and `metaworld/<task>-v3`; names the valid ids
    otherwise, and the extra to install when Meta-World is missing."""
    if env_id.startswith(METAWORLD_PREFIX):
        if not metaworld_available():
            raise MissingExtra(f"{env_id} needs Meta-World, which is not installed: {METAWORLD_EXTRA}")
        from sims.metaworld import task_names

        task = env_id[len(METAWORLD_PREFIX):]
        if task not in task_names():
            raise ValueError(f"unknown Meta-World task {task!r}; valid tasks: "
                             f"{', '.join(METAWORLD_PREFIX + t for t in task_names())}")
        return env_id
    full = env_id if env_id.startswith("sims/") else f"sims/{env_id}"
    if full not in ENV_SPECS:
        more = f", or metaworld/<task> ({METAWORLD_EXTRA})" if not metaworld_available() else ", metaworld/<task>-v3"
        raise ValueError(f"unknown task {env_id!r}; valid tasks: {', '.join(ENV_SPECS)}{more}")
    return full


_register()

__all__ = ["ACTION_DIM", "ENV_SPECS", "STATE_DIM", "TASKS", "MissingExtra", "TabletopEnv", "check_env_id",
           "metaworld_available"]
