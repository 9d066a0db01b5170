"""The two protocols the acting side is built on.

A `Policy` maps an observation to a chunk of future actions; a `Robot` is anything that can be
observed and commanded. Sim robots, real arms, ONNX policies and remote policies all fit them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """observation: {<camera key>: uint8 [H, W, 3] for each of metadata["image_keys"], "state": float32 [S],
    "prompt": str}. act() returns actions float32 [K, D]: K future actions of D dimensions, the first
    for the tick the observation was taken at. metadata: see policies.spec.PolicySpec.metadata."""

    metadata: dict

    def reset(self) -> None: ...

    def act(self, observation: dict) -> np.ndarray: ...


@runtime_checkable
class Robot(Protocol):
    """get_observation() returns the same dict a Policy takes: one uint8 [H, W, 3] image per camera key
    the policy names, "state", optionally "timestamp" (time.monotonic() at capture); the prompt may be
    added by the caller. apply_action(action) commands float32 [D] in the training data's convention.

    stop() must be safe to call from another thread while get_observation() or apply_action() is
    blocked in this one (the control loop's watchdog does exactly that when a driver call hangs), and
    safe to call more than once. It should bring the robot to a safe standstill whatever its state.

    A robot may also offer hold(): stand still at its current position (its own notion of holding,
    used instead of the policy's hold action when the policy is late).
    """

    def get_observation(self) -> dict: ...

    def apply_action(self, action: np.ndarray) -> None: ...

    def stop(self) -> None: ...


def act_batch(policy: Policy, observations: list[dict]) -> np.ndarray:
    """[B, K, D] for B observations: one batched call where the policy offers it."""
    if hasattr(policy, "act_batch"):
        return policy.act_batch(observations)
    return np.stack([policy.act(obs) for obs in observations])
