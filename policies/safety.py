"""The safety filter between a policy and a robot: bounds, rate limit, and a stop on garbage."""

from __future__ import annotations

import numpy as np


class UnsafeAction(RuntimeError):
    """The policy produced something that must never reach the robot (NaN, inf, wrong shape)."""


class SafetyFilter:
    """clamp(action, low, high), then limit each dimension's change per step to `max_delta`.

    NaN or inf, or an action of the wrong shape, raises `UnsafeAction`; the control loop answers
    with a safe stop. `clamped` and `rate_limited` count how often each rule changed an action.
    """

    def __init__(self, low, high, max_delta=None):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.shape != self.high.shape or np.any(self.low > self.high):
            raise ValueError(f"action bounds must have one shape and low <= high, got {self.low} and {self.high}")
        self.max_delta = None if max_delta is None else np.broadcast_to(np.asarray(max_delta, np.float32), self.low.shape)
        self.reset()

    def reset(self) -> None:
        self.previous: np.ndarray | None = None
        self.clamped = 0
        self.rate_limited = 0

    def __call__(self, action) -> np.ndarray:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.low.shape:
            raise UnsafeAction(f"action has shape {action.shape}, the robot takes {self.low.shape}")
        if not np.all(np.isfinite(action)):
            raise UnsafeAction(f"non-finite action {action.tolist()}")
        safe = np.clip(action, self.low, self.high)
        self.clamped += int(not np.array_equal(safe, action))
        if self.max_delta is not None and self.previous is not None:
            limited = np.clip(safe, self.previous - self.max_delta, self.previous + self.max_delta)
            self.rate_limited += int(not np.array_equal(limited, safe))
            safe = limited
        self.previous = safe
        return safe


def safety_filter_for(metadata: dict, low=None, high=None, max_delta=None) -> SafetyFilter:
    """A filter for a policy: its action bounds (metadata `action_low/high`, else [-1, 1]), narrowed by
    the robot's or the operator's own `low` / `high`."""
    dim = metadata["action_dim"]
    policy_low = np.asarray(metadata.get("action_low") or [-1.0] * dim, np.float32)
    policy_high = np.asarray(metadata.get("action_high") or [1.0] * dim, np.float32)
    if low is not None:
        policy_low = np.maximum(policy_low, np.asarray(low, np.float32))
    if high is not None:
        policy_high = np.minimum(policy_high, np.asarray(high, np.float32))
    return SafetyFilter(policy_low, policy_high, max_delta)
