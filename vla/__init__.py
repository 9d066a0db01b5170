"""Vision-language-action policies: a Llama backbone decoding discretized action tokens.

`vla.VLA` is imported on first use, so the command line's light commands start without torch.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "VLA":
        from vla.model.vla import VLA

        return VLA
    raise AttributeError(f"module 'vla' has no attribute {name!r}")
