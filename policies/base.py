"""The two protocols the acting side is built on.

A `Policy` maps an observation to a chunk of future actions; a `Robot` is anything that can be
observed and commanded. Sim robots, real arms, ONNX policies and remote policies all fit them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """observation: {"image": uint8 [H, W, 3], "state": float32 [S], "prompt": str, ...}
    act() returns actions float32 [K, D]: K future actions of D dimensions, the first to run now."""

    metadata: dict

    def reset(self) -> None: ...

    def act(self, observation: dict) -> np.ndarray: ...


@runtime_checkable
class Robot(Protocol):
    """get_observation() returns the same dict a Policy takes (the prompt may be added by the caller)."""

    def get_observation(self) -> dict: ...

    def apply_action(self, action: np.ndarray) -> None: ...

    def stop(self) -> None: ...


def act_batch(policy: Policy, observations: list[dict]) -> np.ndarray:
    """[B, K, D] for B observations: one batched call where the policy offers it."""
    if hasattr(policy, "act_batch"):
        return policy.act_batch(observations)
    return np.stack([policy.act(obs) for obs in observations])
