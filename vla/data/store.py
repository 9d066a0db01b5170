"""The native episode store: robomimic-style HDF5.

    data/                       attrs: env_args (JSON), total (steps), action_space (JSON: names, hold)
      demo_0/                   attrs: instruction, task, target, seed, fps, num_samples, success
        obs/image               uint8   [T, H, W, 3]
        obs/wrist_image         uint8   [T, H, W, 3]  (optional)
        obs/state               float32 [T, S]
        actions                 float32 [T, D]
        rewards                 float32 [T]
        dones                   bool    [T]

Episodes are written one at a time and the file is flushed after each, so an interrupted
collection leaves every finished episode readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from vla.errors import DatasetError


def is_image(dataset) -> bool:
    """A camera's frames: uint8 [T, H, W, 3]."""
    return dataset.dtype == np.uint8 and len(dataset.shape) == 4 and dataset.shape[-1] == 3


@dataclass
class Episode:
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


class EpisodeWriter:
    """Appends episodes to an HDF5 file. Use as a context manager."""

    def __init__(self, path: str | Path, env_args: dict, append: bool = False, action_space: dict | None = None):
        """`action_space`: {"names": [...], "hold": [number or None per dimension]} (see policies.spec)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and self.path.exists():
            _check_readable(self.path)
        self._file = h5py.File(self.path, "a" if append else "w")
        self._data = self._file.require_group("data")
        if "env_args" not in self._data.attrs:
            self._data.attrs["total"] = 0
        self._data.attrs["env_args"] = json.dumps(_merge_env_args(json.loads(self._data.attrs.get("env_args", "null")),
                                                                  env_args))
        if action_space is not None and "action_space" not in self._data.attrs:
            self._data.attrs["action_space"] = json.dumps(action_space)
        self.num_episodes = len(_demo_names(self._data))

    def add(self, episode: Episode) -> str:
        name = f"demo_{self.num_episodes}"
        group = self._data.create_group(name)
        obs = group.create_group("obs")
        for key, value in episode.observations.items():
            if is_image(value):
                obs.create_dataset(key, data=value, chunks=(1, *value.shape[1:]), compression="lzf")
            else:
                obs.create_dataset(key, data=value)
        group.create_dataset("actions", data=episode.actions.astype(np.float32))
        group.create_dataset("rewards", data=episode.rewards.astype(np.float32))
        group.create_dataset("dones", data=episode.dones.astype(bool))
        for key, value in {**episode.attrs, "num_samples": len(episode)}.items():
            group.attrs[key] = value
        self._data.attrs["total"] = int(self._data.attrs["total"]) + len(episode)
        self._file.flush()
        self.num_episodes += 1
        return name

    def existing_seeds(self) -> list[int]:
        return [int(self._data[name].attrs["seed"]) for name in _demo_names(self._data) if "seed" in self._data[name].attrs]

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _merge_env_args(stored: dict | None, new: dict) -> dict:
    """The store's env_args after writing episodes of `new`'s environment: the first writer's, plus every
    task written since and its settings (`tasks`, `task_env_kwargs`), so that a store mixing tasks says
    how to make each of them."""
    merged = dict(stored if stored is not None else new)
    name = new.get("env_name")
    if name:
        merged["tasks"] = list(dict.fromkeys([*merged.get("tasks", []), name]))
        merged["task_env_kwargs"] = {**merged.get("task_env_kwargs", {}), name: dict(new.get("env_kwargs", {}))}
    return merged


def env_kwargs_for(env_args: dict, env_id: str) -> dict:
    """The settings `env_id` was demonstrated with, from a store's (or a policy's) env_args; {} for a task
    the data does not hold."""
    if env_id in env_args.get("task_env_kwargs", {}):
        return dict(env_args["task_env_kwargs"][env_id])
    if env_id == env_args.get("env_name") or env_id in env_args.get("tasks", []):
        return dict(env_args.get("env_kwargs", {}))
    return {}


def _demo_names(data: h5py.Group) -> list[str]:
    """Episode group names in numeric order (demo_2 before demo_10)."""
    names = [n for n in data.keys() if n.startswith("demo_")]
    return sorted(names, key=lambda n: int(n.split("_", 1)[1]))


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"{path}: not an HDF5 file")


class EpisodeReader:
    """Reads a store, checking its layout on open. Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _check_readable(self.path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise DatasetError(f"{self.path}: cannot open as HDF5 ({_first_line(err)})") from None
        if "data" not in self._file:
            self._file.close()
            raise DatasetError(f"{self.path}: missing the 'data/' group (expected data/demo_N/...)")
        self._data = self._file["data"]
        self.names = _demo_names(self._data)
        for name in self.names:
            self._check_episode(name)

    def _check_episode(self, name: str) -> None:
        group = self._data[name]
        for key in ("actions", "obs"):
            if key not in group:
                raise DatasetError(f"{self.path}: data/{name} is missing '{key}'")
        steps = group["actions"].shape[0]
        for key, dataset in group["obs"].items():
            if dataset.shape[0] != steps:
                raise DatasetError(
                    f"{self.path}: data/{name}/obs/{key} has {dataset.shape[0]} steps, actions have {steps}"
                )

    @property
    def env_args(self) -> dict:
        return json.loads(self._data.attrs.get("env_args", "{}"))

    @property
    def action_space(self) -> dict:
        """{"names", "hold"} where the store records them, else {}."""
        return json.loads(self._data.attrs.get("action_space", "{}"))

    def camera_keys(self, index: int = 0) -> list[str]:
        """The observation keys of episode `index` that hold camera frames."""
        obs = self._data[self.names[index]]["obs"]
        return [key for key in obs.keys() if is_image(obs[key])]

    def __len__(self) -> int:
        return len(self.names)

    def observation_keys(self, index: int) -> list[str]:
        return list(self._data[self.names[index]]["obs"].keys())

    def attrs(self, index: int) -> dict:
        return {k: _plain(v) for k, v in self._data[self.names[index]].attrs.items()}

    def episode(self, index: int, keys: tuple[str, ...] | None = None) -> Episode:
        """One episode; `keys` limits which observations are read (images are the bulk)."""
        if not 0 <= index < len(self.names):
            raise DatasetError(f"{self.path}: episode {index} out of range (0..{len(self.names) - 1})")
        group = self._data[self.names[index]]
        obs_keys = keys if keys is not None else tuple(group["obs"].keys())
        missing = [k for k in obs_keys if k not in group["obs"]]
        if missing:
            raise DatasetError(f"{self.path}: data/{self.names[index]}/obs is missing {missing}")
        steps = group["actions"].shape[0]
        return Episode(
            observations={k: group["obs"][k][()] for k in obs_keys},
            actions=group["actions"][()],
            rewards=group["rewards"][()] if "rewards" in group else np.zeros(steps, np.float32),
            dones=group["dones"][()] if "dones" in group else np.zeros(steps, bool),
            attrs=self.attrs(index),
        )

    def actions(self) -> np.ndarray:
        """All actions, concatenated: [N, D]."""
        return np.concatenate([self._data[n]["actions"][()] for n in self.names]) if self.names else np.zeros((0, 0))

    def observations(self, key: str) -> np.ndarray:
        return np.concatenate([self._data[n]["obs"][key][()] for n in self.names])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value):
    """HDF5 attributes come back as numpy scalars and bytes; make them JSON-friendly."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def dimension_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics of [N, D] values: min, max, mean, std, q01, q99."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise DatasetError(f"statistics need a non-empty [N, D] array, got shape {values.shape}")
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }
