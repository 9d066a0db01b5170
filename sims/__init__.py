"""MuJoCo tabletop worlds behind the Gymnasium API.

    import gymnasium as gym
    import sims  # registers the environments
    env = gym.make("sims/Reach-v0", render_mode="rgb_array")
"""

from __future__ import annotations

import gymnasium as gym

from sims.env import ACTION_DIM, STATE_DIM, TabletopEnv
from sims.tasks import TASKS

# Registered ids and the keyword arguments that define them. Any keyword can be overridden in gym.make.
ENV_SPECS: dict[str, dict] = {
    "sims/Reach-v0": {"task": "reach"},
    "sims/Push-v0": {"task": "push"},
    "sims/Lift-v0": {"task": "lift"},
    "sims/PickPlace-v0": {"task": "pick_place"},
}


def _register() -> None:
    for env_id, kwargs in ENV_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="sims.env:TabletopEnv", kwargs=kwargs)


def check_env_id(env_id: str) -> str:
    """Accepts `sims/Reach-v0` or the short `Reach-v0`; names the valid ids otherwise."""
    full = env_id if env_id.startswith("sims/") else f"sims/{env_id}"
    if full not in ENV_SPECS:
        raise ValueError(f"unknown task {env_id!r}; valid tasks: {', '.join(ENV_SPECS)}")
    return full


_register()

__all__ = ["ACTION_DIM", "ENV_SPECS", "STATE_DIM", "TASKS", "TabletopEnv", "check_env_id"]
