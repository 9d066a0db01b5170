"""The safety filter between a policy and a robot: bounds, rate limit, holds, and a stop on garbage."""

from __future__ import annotations

import numpy as np


class UnsafeAction(RuntimeError):
    """The policy produced something that must never reach the robot (NaN, inf, wrong shape)."""


class SafetyFilter:
    """clamp(action, low, high), then limit each dimension's change per step to `max_delta`.

    NaN or inf, or an action of the wrong shape, raises `UnsafeAction`; the control loop answers
    with a safe stop. `clamped` and `rate_limited` count how often each rule changed an action.

    `hold` says per dimension what standing still means: a number for a delta dimension (0: no
    motion), None for an absolute one (repeat the last command). `hold()` builds that action from
    the last one sent, clamped to the bounds but never rate-limited (a rate-limited zero would keep
    a delta robot moving), and makes it the filter's last command.
    """

    def __init__(self, low, high, max_delta=None, hold=None):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.ndim != 1 or self.low.shape != self.high.shape or np.any(self.low > self.high):
            raise ValueError(f"action bounds must be two vectors of one length with low <= high, got {low} and {high}")
        self.max_delta = None
        if max_delta is not None:
            max_delta = np.asarray(max_delta, np.float32).reshape(-1)
            if max_delta.size not in (1, self.low.size) or np.any(max_delta <= 0):
                raise ValueError(f"max_delta takes one positive value or one per action dimension ({self.low.size}), "
                                 f"got {max_delta.tolist()}")
            self.max_delta = np.broadcast_to(max_delta, self.low.shape)
        self.hold_values: np.ndarray | None = None
        self.set_hold(hold)
        self.reset()

    def set_hold(self, hold) -> None:
        """hold: one entry per dimension, a number (delta) or None (absolute); None for the whole vector
        leaves holding unset (absolute everywhere)."""
        if hold is None:
            self.hold_values, self._hold_delta = None, np.zeros(self.low.shape, bool)
            return
        if len(hold) != self.low.size:
            raise ValueError(f"the hold vector has {len(hold)} entries, the actions {self.low.size}")
        self._hold_delta = np.array([v is not None for v in hold])
        self.hold_values = np.array([0.0 if v is None else float(v) for v in hold], np.float32)

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

    def hold(self) -> np.ndarray | None:
        """The action that stands still, or None before any action was sent (then nothing is sent)."""
        if self.previous is None:
            return None
        values = self.hold_values if self.hold_values is not None else self.previous
        held = np.clip(np.where(self._hold_delta, values, self.previous), self.low, self.high).astype(np.float32)
        self.previous = held
        return held


def safety_filter_for(metadata: dict, low=None, high=None, max_delta=None) -> SafetyFilter:
    """A filter for a policy: its action bounds (metadata `action_low/high`, else unbounded) narrowed
    by the robot's or the operator's own `low` / `high`, and its hold vector (`action_hold`)."""
    dim = metadata["action_dim"]
    policy_low = np.asarray(metadata.get("action_low") or [-np.inf] * dim, np.float32)
    policy_high = np.asarray(metadata.get("action_high") or [np.inf] * dim, np.float32)
    for name, given in (("low", low), ("high", high)):
        if given is not None and np.size(given) not in (1, dim):
            raise ValueError(f"action {name} takes one value or {dim}, got {np.size(given)}")
    if low is not None:
        policy_low = np.maximum(policy_low, np.asarray(low, np.float32))
    if high is not None:
        policy_high = np.minimum(policy_high, np.asarray(high, np.float32))
    return SafetyFilter(policy_low, policy_high, max_delta, hold=metadata.get("action_hold"))
