"""Executing action chunks: receding horizon or temporal ensembling.

    executor = ChunkExecutor(mode="receding", execute=4)
    if executor.needs_chunk():
        executor.add_chunk(policy.act(obs))     # [K, D]
    action = executor.next_action()             # [D]
"""

from __future__ import annotations

from collections import deque

import numpy as np

MODES = ("receding", "ensemble")


class ChunkExecutor:
    """receding: run the first `execute` actions of each chunk, then ask again.
    ensemble: ask every step and average every chunk's prediction for the current step, weighting
    older predictions by exp(-decay * age) (ACT's temporal ensembling)."""

    def __init__(self, mode: str = "receding", execute: int | None = None, decay: float = 0.1):
        if mode not in MODES:
            raise ValueError(f"chunk mode must be one of {MODES}, got {mode!r}")
        if execute is not None and execute < 1:
            raise ValueError(f"execute must be at least 1, got {execute}")
        self.mode = mode
        self.execute = execute
        self.decay = decay
        self.reset()

    def reset(self) -> None:
        self._queue: deque[np.ndarray] = deque()
        self._predictions: list[tuple[int, np.ndarray]] = []  # (time the chunk was made, chunk)
        self._time = 0

    def needs_chunk(self) -> bool:
        return self.mode == "ensemble" or not self._queue

    def add_chunk(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2:
            raise ValueError(f"an action chunk must be [K, D], got shape {chunk.shape}")
        if self.mode == "receding":
            self._queue.extend(chunk[: self.execute or len(chunk)])
        else:
            self._predictions.append((self._time, chunk))

    def next_action(self) -> np.ndarray:
        if self.mode == "receding":
            if not self._queue:
                raise RuntimeError("no action queued; add a chunk first")
            action = self._queue.popleft()
        else:
            live = [(t, c) for t, c in self._predictions if self._time - t < len(c)]
            if not live:
                raise RuntimeError("no prediction covers this step; add a chunk first")
            self._predictions = live
            actions = np.stack([c[self._time - t] for t, c in live])
            weights = np.exp(-self.decay * np.arange(len(live)))  # oldest first, ACT's convention
            action = (weights[:, None] * actions).sum(0) / weights.sum()
        self._time += 1
        return action.astype(np.float32)
