"""A `Robot` over any Gymnasium environment with dict observations (image, state), such as sims/."""

from __future__ import annotations

import time

import numpy as np


class SimRobot:
    """get_observation() -> {"image", "state", "prompt", "timestamp"}; apply_action() steps the env.

    `done`, `success` and `info` describe the episode in progress; `reset(seed)` starts another.
    """

    def __init__(self, env, seed: int | None = None, clock=time.monotonic):
        self.env = env
        self.clock = clock
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self._obs, self.info = self.env.reset(seed=seed)
        self.done = False
        self.success = False
        self.steps = 0
        self.stopped = False

    @property
    def instruction(self) -> str:
        return self.info.get("instruction", getattr(self.env.unwrapped, "instruction", ""))

    def get_observation(self) -> dict:
        obs = {key: value for key, value in self._obs.items()}
        obs["prompt"] = self.instruction
        # A simulated world does not move between steps: its last rendering shows the present, as a
        # camera that keeps streaming would (a stamp from the last step would turn stale while holding).
        obs["timestamp"] = self.clock()
        return obs

    def apply_action(self, action: np.ndarray) -> None:
        if self.done:
            return
        self._obs, _, terminated, truncated, info = self.env.step(np.asarray(action, np.float32))
        self.info = {**self.info, **info}
        self.success = bool(info.get("is_success", False))
        self.done = bool(terminated or truncated)
        self.steps += 1

    def stop(self) -> None:
        """In simulation, stopping ends the episode where it is."""
        self.stopped = True
        self.done = True
