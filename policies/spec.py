"""`PolicySpec`: what a policy needs from the robot and gives back, in one place.

An export writes it as `policy.json`; `OnnxPolicy` reads it; the PyTorch policy builds the same
object from its checkpoint; the policy server sends `spec.metadata(...)` to every client. So the
camera keys, the action space and the preprocessing are described once, by one class.

Action space: each dimension has a name (where the data gives one) and a hold value, what
"stand still" means for it: a number for a delta dimension (0: no motion), `None` for an absolute
one (repeat the last command). The built-in sims are mixed: delta x, y, z and an absolute gripper.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 2
POLICY_FILE = "policy.json"


class PolicySpecError(ValueError):
    """policy.json is missing something or contradicts itself."""


@dataclass
class PolicySpec:
    decoding: str
    image_keys: list[str]
    image_size: int
    max_prompt_tokens: int
    pad_id: int
    bos_id: int
    state_dim: int
    action_dim: int
    chunk_size: int
    n_bins: int
    vocab_size: int
    norm_stats: dict
    action_low: list[float]
    action_high: list[float]
    action_names: list[str] = field(default_factory=list)
    action_hold: list[float | None] = field(default_factory=list)
    prefix_actions: int = 0  # leading actions of a chunk a request may give as committed (action_prefix)
    control_hz: float = 10.0
    env_args: dict = field(default_factory=dict)
    fusion: str = "prefix"
    files: list[str] = field(default_factory=list)
    fp16: bool = False
    num_layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    prompt_template: str = ""
    image_preprocessing: str = ("resize to image_size x image_size with OpenCV (INTER_AREA when shrinking), "
                                "uint8 HWC RGB; pixel normalization happens inside the graph")
    reference: str | None = None  # reference inputs and outputs for a parity check at load (export)
    parity: dict | None = None
    source: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if not self.image_keys or len(set(self.image_keys)) != len(self.image_keys):
            raise PolicySpecError(f"image_keys must be distinct camera names, got {self.image_keys}")
        if not self.action_names:
            self.action_names = [f"action_{i}" for i in range(self.action_dim)]
        if not self.action_hold:
            self.action_hold = [None] * self.action_dim
        for name in ("action_low", "action_high", "action_names", "action_hold"):
            if len(getattr(self, name)) != self.action_dim:
                raise PolicySpecError(f"{name} has {len(getattr(self, name))} entries, action_dim is {self.action_dim}")

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / POLICY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PolicySpec:
        path = Path(directory) / POLICY_FILE
        if not path.exists():
            raise PolicySpecError(f"{Path(directory)}: no {POLICY_FILE}; not an exported policy (run `vla export` first)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PolicySpecError(f"{path}: invalid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            version = data.get("format_version") if isinstance(data, dict) else None
            raise PolicySpecError(f"{path}: format_version {version!r}, this runtime reads {FORMAT_VERSION} "
                                  "(export the checkpoint again with this version's `vla export`)")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise PolicySpecError(f"{path}: missing keys {missing}")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except PolicySpecError as err:
            raise PolicySpecError(f"{path}: {err}") from None

    # ------------------------------------------------------------------ what clients see
    @property
    def observation_keys(self) -> list[str]:
        return [*self.image_keys, "prompt"] + (["state"] if self.state_dim else [])

    def metadata(self, **runtime) -> dict:
        """The dict a `Policy` exposes as `.metadata` and the server sends on connect; `runtime`
        adds how it runs (runtime, device, providers, ...)."""
        return {
            **runtime,
            "decoding": self.decoding,
            "image_keys": list(self.image_keys),
            "image_size": self.image_size,
            "observation_keys": self.observation_keys,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "action_names": list(self.action_names),
            "action_hold": list(self.action_hold),
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "chunk_size": self.chunk_size,
            "prefix_actions": self.prefix_actions,
            "control_hz": self.control_hz,
            "max_prompt_tokens": self.max_prompt_tokens,
            "env_args": self.env_args,
        }
