"""Discretized actions, OpenVLA's recipe, in numpy so the robot side needs no torch.

Per dimension: normalize with the data's q01/q99 to [-1, 1] (clipping), cut [-1, 1] into
`n_bins` uniform bins, and use the last `n_bins` ids of the vocabulary as action tokens.
Decoding returns bin centres, un-normalized. A dimension that is constant in the data passes
its constant through; a binary dimension (a gripper that is open or closed) stays binary.
"""

from __future__ import annotations

import numpy as np

STAT_KEYS = ("min", "max", "mean", "std", "q01", "q99")


def action_statistics(actions: np.ndarray) -> dict:
    """Statistics of actions [N, D] as stored in norm_stats.json: per-dim stats plus kind flags."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"actions must be a non-empty [N, D] array, got shape {actions.shape}")
    stats = {
        "min": actions.min(0),
        "max": actions.max(0),
        "mean": actions.mean(0),
        "std": actions.std(0),
        "q01": np.quantile(actions, 0.01, axis=0),
        "q99": np.quantile(actions, 0.99, axis=0),
    }
    constant = (stats["max"] - stats["min"]) < 1e-6
    binary = np.array(
        [not c and len(np.unique(actions[:, d])) == 2 for d, c in enumerate(constant)]
    )
    out = {k: v.tolist() for k, v in stats.items()}
    out["constant"] = constant.tolist()
    out["binary"] = binary.tolist()
    return out


class ActionTokenizer:
    """Maps actions [..., D] to token ids [..., D] and back.

    Args:
        stats: the `action` entry of norm_stats.json (see `action_statistics`).
        vocab_size: size of the backbone's vocabulary; action ids are [vocab_size - n_bins, vocab_size).
        n_bins: number of uniform bins over [-1, 1].
    """

    def __init__(self, stats: dict, vocab_size: int, n_bins: int = 256):
        missing = [k for k in ("q01", "q99", "min", "max", "mean") if k not in stats]
        if missing:
            raise ValueError(f"action statistics are missing {missing}")
        self.n_bins = n_bins
        self.vocab_size = vocab_size
        self.offset = vocab_size - n_bins
        if self.offset < 0:
            raise ValueError(f"vocab_size {vocab_size} is smaller than n_bins {n_bins}")
        self.dim = len(stats["q01"])
        self.constant = np.asarray(stats.get("constant", [False] * self.dim), bool)
        self.binary = np.asarray(stats.get("binary", [False] * self.dim), bool)
        # Binary dimensions use their two values, not quantiles: a gripper closed in 0.5% of the
        # steps would otherwise collapse to a constant.
        self.low = np.where(self.binary, stats["min"], stats["q01"]).astype(np.float64)
        self.high = np.where(self.binary, stats["max"], stats["q99"]).astype(np.float64)
        self.constant |= (self.high - self.low) < 1e-8
        self.mean = np.asarray(stats["mean"], np.float64)
        self.edges = np.linspace(-1.0, 1.0, n_bins + 1)
        self.centers = (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def bin_width(self) -> np.ndarray:
        """Width of one bin per dimension, in action units."""
        return (self.high - self.low) / self.n_bins

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        scale = np.where(self.constant, 1.0, self.high - self.low)
        return np.clip(2.0 * (actions - self.low) / scale - 1.0, -1.0, 1.0)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape[-1] != self.dim:
            raise ValueError(f"actions must end in {self.dim} dimensions, got shape {actions.shape}")
        norm = self.normalize(actions)
        bins = np.clip(np.floor((norm + 1.0) / 2.0 * self.n_bins), 0, self.n_bins - 1).astype(np.int64)
        bins = np.where(self.binary, np.where(norm > 0, self.n_bins - 1, 0), bins)
        bins = np.where(self.constant, self.n_bins // 2, bins)
        return bins + self.offset

    def decode(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.shape[-1] != self.dim:
            raise ValueError(f"token ids must end in {self.dim} dimensions, got shape {ids.shape}")
        bins = np.clip(ids.astype(np.int64) - self.offset, 0, self.n_bins - 1)
        norm = self.centers[bins]
        actions = (norm + 1.0) / 2.0 * (self.high - self.low) + self.low
        actions = np.where(self.binary, np.where(norm > 0, self.high, self.low), actions)
        actions = np.where(self.constant, self.mean, actions)
        return actions.astype(np.float32)
