"""A trained checkpoint behind the `Policy` protocol, and `load_policy` for either kind of directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vla.training.checkpoints import resolve_policy_dir


class TorchPolicy:
    """PyTorch eager inference of a VLA checkpoint. act(observation) -> actions [K, D]."""

    def __init__(self, path: str | Path, device: str = "auto"):
        from vla.model.checkpoint import policy_spec
        from vla.model.vla import VLA

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.path = Path(path)
        self.model = VLA.from_pretrained(path, device=device)
        self.spec = policy_spec(self.model)
        self.metadata = self.spec.metadata(runtime="torch", device=device)

    def reset(self) -> None:
        """Stateless between decisions."""

    def act(self, observation: dict) -> np.ndarray:
        return self.model.predict_action(observation)

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        return self.model.predict_action(observations)


def load_policy(path: str | Path, device: str = "auto"):
    """An exported directory (policy.json) -> OnnxPolicy; a checkpoint or training run -> TorchPolicy."""
    resolved = resolve_policy_dir(path)
    if (resolved / "policy.json").exists():
        from policies.onnx_policy import OnnxPolicy

        return OnnxPolicy(resolved, device=device)
    return TorchPolicy(resolved, device=device)
