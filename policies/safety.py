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
