"""The wire protocol of the policy server, compatible with openpi's client.

msgpack, with numpy arrays as {b"__ndarray__": True, b"data", b"dtype", b"shape"} maps (openpi's
msgpack_numpy). On connect the server sends a metadata map; each request is an observation map;
each reply is {"actions": float32 [K, D], "server_timing": {"infer_ms": ...}}. An error is sent as
a text frame holding the message (openpi's client raises it), and the connection stays open.
"""

from __future__ import annotations

import functools

import msgpack
import numpy as np


class ProtocolError(ValueError):
    """A request the server cannot use; the message says why, for the client."""


def _pack_array(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _unpack_array(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


packb = functools.partial(msgpack.packb, default=_pack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=_unpack_array)


def decode_request(message, metadata: dict) -> dict:
    """Bytes from a client -> a validated observation dict. Raises ProtocolError and nothing else."""
    if isinstance(message, str):
        raise ProtocolError("expected a binary msgpack frame, got text")
    try:
        obs = unpackb(message)
    except Exception as err:  # msgpack and numpy raise many types for malformed input
        raise ProtocolError(f"invalid msgpack: {type(err).__name__}: {err}") from None
    if not isinstance(obs, dict):
        raise ProtocolError(f"the request must be a map of observation keys, got {type(obs).__name__}")
    obs = {k.decode(errors="replace") if isinstance(k, bytes) else k: v for k, v in obs.items()}
    return validate_observation(obs, metadata)


def validate_observation(obs: dict, metadata: dict) -> dict:
    """Check an observation against the policy's metadata: its cameras, state and prompt."""
    cameras = metadata.get("image_keys", ["image"])
    missing = [key for key in metadata.get("observation_keys", [*cameras, "prompt"]) if key not in obs]
    if missing:
        sent = sorted(k for k, v in obs.items() if isinstance(v, np.ndarray) and v.ndim == 3)
        if any(key in cameras for key in missing):
            raise ProtocolError(f"missing cameras {[k for k in missing if k in cameras]}: the policy takes {cameras}, "
                                f"the request has {sent}")
        raise ProtocolError(f"missing key {missing[0]!r}; expected {metadata.get('observation_keys')}")
    out = dict(obs)
    for key in cameras:
        image = obs[key]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ProtocolError(f"{key!r} must be a uint8 array [H, W, 3], got {_describe(image)}")
        if not 8 <= image.shape[0] <= 4096 or not 8 <= image.shape[1] <= 4096:
            raise ProtocolError(f"{key!r} has an unusable size {image.shape[:2]}")
    state_dim = metadata.get("state_dim", 0)
    if state_dim:
        state = obs.get("state")
        if not isinstance(state, np.ndarray) or state.dtype.kind != "f" or state.shape != (state_dim,):
            raise ProtocolError(f"'state' must be a float array [{state_dim}], got {_describe(state)}")
        if not np.all(np.isfinite(state)):
            raise ProtocolError("'state' contains NaN or inf")
        out["state"] = state.astype(np.float32)
    prompt = obs.get("prompt")
    if isinstance(prompt, bytes):
        prompt = prompt.decode(errors="replace")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 1000:
        raise ProtocolError(f"'prompt' must be a non-empty string of at most 1000 characters, got {_describe(prompt)}")
    out["prompt"] = prompt
    if obs.get("action_prefix") is not None:
        prefix, limit, dim = obs["action_prefix"], metadata.get("prefix_actions", 0), metadata.get("action_dim")
        if not limit:
            raise ProtocolError("'action_prefix' given, but this policy takes none (prefix_actions is 0)")
        if (not isinstance(prefix, np.ndarray) or prefix.dtype.kind != "f" or prefix.ndim != 2
                or prefix.shape[1] != dim or len(prefix) > limit or not np.all(np.isfinite(prefix))):
            raise ProtocolError(f"'action_prefix' must be a finite float array [d <= {limit}, {dim}], "
                                f"got {_describe(prefix)}")
        out["action_prefix"] = prefix.astype(np.float32)
    return out


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {list(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"
