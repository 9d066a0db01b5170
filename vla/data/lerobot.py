"""LeRobot dataset format v3.0 in and out, read with pyarrow and PyAV (lerobot itself is not needed).

    DIR/meta/info.json                    codebase_version "v3.0", fps, features, paths
    DIR/meta/tasks.parquet                task (the index) -> task_index
    DIR/meta/episodes/chunk-*/file-*.parquet   per episode: length, dataset_from/to_index, data file,
                                          and per camera its video file and from/to_timestamp
    DIR/data/chunk-*/file-*.parquet       per frame: observation.state, action, timestamp, frame_index,
                                          episode_index, index, task_index
    DIR/videos/<camera feature>/chunk-*/file-*.mp4   several episodes per file, one after another

Mapping: `observation.images.<k>` is camera `<k>` (HDF5 `obs/<k>`, the policy's camera key),
`observation.state` is `obs/state`, `action` is `actions`, an episode's task is its instruction.
LeRobot does not say what holding still means for an action; an import records every dimension as
absolute (a late policy repeats the last command) unless told otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from vla.data.store import Episode, EpisodeReader, EpisodeWriter
from vla.errors import DatasetError

CODEBASE_VERSION = "v3.0"
INFO = "meta/info.json"
CAMERA_PREFIX = "observation.images."
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
# pandas' own description of a frame indexed by the task string with one int64 column, task_index (what
# `DataFrame.to_parquet` writes for meta/tasks.parquet), so that pandas restores the index on reading.
TASKS_PANDAS_METADATA = {
    "index_columns": ["__index_level_0__"],
    "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "str",
                        "metadata": {"encoding": "UTF-8"}}],
    "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                 "metadata": None},
                {"name": None, "field_name": "__index_level_0__", "pandas_type": "object", "numpy_type": "str",
                 "metadata": None}],
    "attributes": {},
    "creator": {"library": "pyarrow", "version": "15"},
    "pandas_version": "2.2.0",
}


# ---------------------------------------------------------------------------- reading


class LeRobotDataset:
    """A LeRobot v3.0 dataset directory, checked on open. `episodes()` yields them one at a time
    (frames decoded as they are needed, so memory holds one episode)."""

    def __init__(self, root: str | Path):
        import pyarrow.parquet as pq

        self.root = Path(root)
        info_path = self.root / INFO
        if not info_path.exists():
            raise DatasetError(f"{self.root}: no {INFO}; not a LeRobot dataset")
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{info_path}: invalid JSON ({err})") from None
        version = self.info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise DatasetError(f"{info_path}: codebase_version {version!r}; this reads {CODEBASE_VERSION} (convert "
                               "older datasets with lerobot's lerobot.datasets.v30.convert_dataset_v21_to_v30)")
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise DatasetError(f"{info_path}: missing {key!r}")
        self.fps = float(self.info["fps"])
        self.features = self.info["features"]
        self.cameras = {name[len(CAMERA_PREFIX):]: name for name, ft in self.features.items()
                        if name.startswith(CAMERA_PREFIX) and ft.get("dtype") in ("video", "image")}
        if "action" not in self.features:
            raise DatasetError(f"{info_path}: no 'action' feature")
        tasks_path = self.root / "meta/tasks.parquet"
        if not tasks_path.exists():
            raise DatasetError(f"{tasks_path}: missing")
        tasks = pq.read_table(tasks_path).to_pydict()
        names = tasks.get("__index_level_0__") or tasks.get("task")
        if names is None or "task_index" not in tasks:
            raise DatasetError(f"{tasks_path}: expected the columns task_index and the task strings")
        self.tasks = dict(zip(tasks["task_index"], names))
        episode_files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not episode_files:
            raise DatasetError(f"{self.root}/meta/episodes: no chunk-*/file-*.parquet")
        rows: list[dict] = []
        for path in episode_files:
            table = pq.read_table(path)
            rows += table.select([c for c in table.column_names if not c.startswith("stats/")]).to_pylist()
        self.episode_rows = sorted(rows, key=lambda r: r["episode_index"])
        self._shapes = {name: tuple(ft.get("shape", ())) for name, ft in self.features.items()}

    def __len__(self) -> int:
        return len(self.episode_rows)

    @property
    def action_names(self) -> list[str] | None:
        return _names(self.features["action"])

    def _path(self, template: str, **kwargs) -> Path:
        path = self.root / template.format(**kwargs)
        if not path.exists():
            raise DatasetError(f"{path}: missing ({', '.join(f'{k}={v}' for k, v in kwargs.items())})")
        return path

    def _frames_table(self) -> Iterator[tuple[dict, dict, Path]]:
        """(episode row, its per-frame columns) in episode order; each data file is read once."""
        import pyarrow.parquet as pq

        current, table = None, None
        for row in self.episode_rows:
            where = (row["data/chunk_index"], row["data/file_index"])
            if where != current:
                path = self._path(self.info["data_path"], chunk_index=where[0], file_index=where[1])
                table = pq.read_table(path)
                index = np.asarray(table.column("index").to_numpy())
                current = where
                data_path = path
            start, stop = row["dataset_from_index"], row["dataset_to_index"]
            rows = np.flatnonzero((index >= start) & (index < stop))
            if len(rows) != row["length"] or len(rows) != stop - start:
                raise DatasetError(f"{data_path}: episode {row['episode_index']} has {len(rows)} frames, "
                                   f"meta/episodes says {row['length']}")
            part = table.take(rows)
            yield row, {name: part.column(name) for name in part.column_names}, data_path

    def episodes(self) -> Iterator[Episode]:
        decoders = {key: _VideoFrames(self, key) for key, name in self.cameras.items()
                    if self.features[name]["dtype"] == "video"}
        for row, columns, data_path in self._frames_table():
            n = row["length"]
            observations = {}
            for key, name in self.cameras.items():
                frames = (decoders[key].episode(row, columns["timestamp"].to_numpy()) if key in decoders
                          else _png_frames(columns[name], data_path, name))
                expected = self._shapes.get(name)
                if expected and frames.shape[1:] != expected:
                    raise DatasetError(f"{data_path}: {name} frames are {list(frames.shape[1:])}, "
                                       f"meta/info.json says {list(expected)}")
                observations[key] = frames
            observations["state"] = (self._vector(columns, "observation.state", data_path) if "observation.state"
                                     in columns else np.zeros((n, 0), np.float32))
            actions = self._vector(columns, "action", data_path)
            task_index = int(columns["task_index"][0].as_py()) if "task_index" in columns else None
            instruction = self.tasks.get(task_index) or (row.get("tasks") or [""])[0]
            yield Episode(observations=observations, actions=actions, rewards=np.zeros(n, np.float32),
                          dones=np.arange(n) == n - 1,
                          attrs={"instruction": instruction, "task": instruction, "fps": self.fps,
                                 "success": True, "lerobot_episode_index": int(row["episode_index"])})

    def _vector(self, columns: dict, name: str, path: Path) -> np.ndarray:
        values = np.asarray(columns[name].to_pylist(), np.float32)
        if values.ndim == 1:
            values = values[:, None]
        expected = self._shapes.get(name)
        if expected and values.shape[1:] != tuple(expected):
            raise DatasetError(f"{path}: {name} has {list(values.shape[1:])} values per frame, meta/info.json says "
                               f"{list(expected)}")
        return values


def _names(feature: dict) -> list[str] | None:
    names = feature.get("names")
    if isinstance(names, dict):  # {"motors": [...]}, as some LeRobot datasets write it
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if isinstance(names, list) else None


def _png_frames(column, path: Path, name: str) -> np.ndarray:
    import cv2

    frames = []
    for cell in column.to_pylist():
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise DatasetError(f"{path}: {name} holds no embedded image bytes")
        frames.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(frames)


class _VideoFrames:
    """One camera's frames, decoded in order across its video files. Episodes come in index order and
    each episode's frames in timestamp order, so one forward pass over each file serves them all."""

    def __init__(self, dataset: LeRobotDataset, key: str):
        self.dataset, self.key, self.name = dataset, key, dataset.cameras[key]
        self.where: tuple[int, int] | None = None
        self.frames: Iterator[tuple[float, np.ndarray]] | None = None
        self.pending: tuple[float, np.ndarray] | None = None
        self.container = None

    def _open(self, where: tuple[int, int]) -> None:
        import av

        if self.container is not None:
            self.container.close()
        template = self.dataset.info.get("video_path") or VIDEO_PATH
        self.path = self.dataset._path(template, video_key=self.name, chunk_index=where[0], file_index=where[1])
        try:
            self.container = av.open(str(self.path))
        except av.error.FFmpegError as err:
            raise DatasetError(f"{self.path}: cannot open ({err})") from None
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.frames = ((float(f.time), f.to_ndarray(format="rgb24")) for f in self.container.decode(stream))
        self.where, self.pending = where, None

    def episode(self, row: dict, timestamps: np.ndarray) -> np.ndarray:
        where = (row[f"videos/{self.name}/chunk_index"], row[f"videos/{self.name}/file_index"])
        start = row[f"videos/{self.name}/from_timestamp"]
        if where != self.where:
            self._open(where)
        wanted = start + np.asarray(timestamps, np.float64)
        tolerance = 0.5 / self.dataset.fps
        out = []
        for t in wanted:
            while True:
                if self.pending is None:
                    self.pending = next(self.frames, None)
                    if self.pending is None:
                        raise DatasetError(f"{self.path}: ends before {t:.3f} s (episode {row['episode_index']})")
                time, frame = self.pending
                if time < t - tolerance:  # a frame of an earlier episode or between the frames asked for
                    self.pending = None
                    continue
                if time > t + tolerance:
                    raise DatasetError(f"{self.path}: no frame at {t:.3f} s (episode {row['episode_index']}; next "
                                       f"frame at {time:.3f} s)")
                out.append(frame)
                self.pending = None
                break
        return np.stack(out)


def import_lerobot(root: str | Path, out: str | Path, action_hold: list | None = None,
                   progress: bool = True) -> dict:
    """LeRobot v3.0 directory -> the native HDF5 store, atomically (a temporary file, renamed at the end)."""
    from tqdm import tqdm

    dataset = LeRobotDataset(root)
    out = Path(out)
    dim = int(np.prod(dataset._shapes.get("action") or (1,)))
    hold = list(action_hold) if action_hold is not None else [None] * dim
    if len(hold) != dim:
        raise DatasetError(f"--action-hold has {len(hold)} values; {root}'s actions have {dim}")
    names = dataset.action_names
    env_args = {"env_name": None, "source": "lerobot", "root": str(Path(root).resolve()),
                "robot_type": dataset.info.get("robot_type"), "fps": dataset.fps,
                "cameras": {key: name for key, name in dataset.cameras.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(handle)
    os.unlink(tmp)
    steps = 0
    try:
        with EpisodeWriter(tmp, env_args=env_args, action_space={"names": names, "hold": hold}) as writer:
            for episode in tqdm(dataset.episodes(), total=len(dataset), desc=f"import {Path(root).name}",
                                unit="ep", disable=not progress):
                writer.add(episode)
                steps += len(episode)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"out": str(out), "episodes": len(dataset), "steps": steps, "cameras": sorted(dataset.cameras),
            "fps": dataset.fps}


# ---------------------------------------------------------------------------- writing


def export_lerobot(store: str | Path, out: str | Path, repo_id: str | None = None, crf: int = 20,
                   progress: bool = True) -> dict:
    """The native HDF5 store -> a LeRobot v3.0 directory (written under a temporary name, then renamed).

    Videos are AV1 (libsvtav1, yuv420p), as LeRobot writes them; all episodes of a camera go into one
    file, one after another, located by from/to_timestamp in meta/episodes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from vla.atomic import atomic_directory

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not empty")
    with EpisodeReader(store) as reader:
        if len(reader) == 0:
            raise DatasetError(f"{store}: holds no episodes")
        cameras = reader.camera_keys(0)
        first = reader.episode(0, keys=(*cameras, "state"))
        fps = float(first.attrs.get("fps", 10))
        if not float(fps).is_integer():
            raise DatasetError(f"{store}: fps {fps} is not a whole number, which LeRobot's video layout needs")
        fps = int(fps)
        state_dim, action_dim = first.observations["state"].shape[1], first.actions.shape[1]
        names = reader.action_space.get("names") or [f"action_{i}" for i in range(action_dim)]
        features = {f"{CAMERA_PREFIX}{key}": {"dtype": "video", "shape": list(first.observations[key].shape[1:]),
                                             "names": ["height", "width", "channels"]} for key in cameras}
        if state_dim:
            features["observation.state"] = {"dtype": "float32", "shape": [state_dim],
                                             "names": [f"state_{i}" for i in range(state_dim)]}
        features["action"] = {"dtype": "float32", "shape": [action_dim], "names": list(names)}
        for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                            ("index", "int64"), ("task_index", "int64")):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}

        with atomic_directory(out) as tmp:
            writers = {key: _VideoWriter(tmp / VIDEO_PATH.format(video_key=f"{CAMERA_PREFIX}{key}", chunk_index=0,
                                                                 file_index=0), fps, crf) for key in cameras}
            tasks: dict[str, int] = {}
            columns: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                                         "episode_index", "index", "task_index")}
            episodes: list[dict] = []
            samples = {key: [] for key in cameras}
            total = 0
            for e in tqdm(range(len(reader)), desc="export lerobot", unit="ep", disable=not progress):
                episode = reader.episode(e, keys=(*cameras, "state"))
                n = len(episode)
                instruction = str(episode.attrs.get("instruction", ""))
                task = tasks.setdefault(instruction, len(tasks))
                row = {"episode_index": e, "tasks": [instruction], "length": n, "data/chunk_index": 0,
                       "data/file_index": 0, "dataset_from_index": total, "dataset_to_index": total + n}
                for key in cameras:
                    start = writers[key].write(episode.observations[key])
                    name = f"{CAMERA_PREFIX}{key}"
                    row.update({f"videos/{name}/chunk_index": 0, f"videos/{name}/file_index": 0,
                                f"videos/{name}/from_timestamp": start, f"videos/{name}/to_timestamp": start + n / fps})
                    samples[key].append(episode.observations[key][:: max(1, n // 4)])
                row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                episodes.append(row)
                columns["observation.state"] += list(episode.observations["state"].astype(np.float32))
                columns["action"] += list(episode.actions.astype(np.float32))
                columns["timestamp"] += list((np.arange(n) / fps).astype(np.float32))
                columns["frame_index"] += list(range(n))
                columns["episode_index"] += [e] * n
                columns["index"] += list(range(total, total + n))
                columns["task_index"] += [task] * n
                total += n
            for writer in writers.values():
                writer.close()

            def fixed(values, dim):
                return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(values, np.float32).reshape(-1)), dim)

            arrays = {}
            if state_dim:
                arrays["observation.state"] = fixed(columns["observation.state"], state_dim)
            arrays["action"] = fixed(columns["action"], action_dim)
            arrays["timestamp"] = pa.array(columns["timestamp"], pa.float32())
            for name in ("frame_index", "episode_index", "index", "task_index"):
                arrays[name] = pa.array(columns[name], pa.int64())
            (tmp / DATA_PATH.format(chunk_index=0, file_index=0)).parent.mkdir(parents=True)
            pq.write_table(pa.table(arrays), tmp / DATA_PATH.format(chunk_index=0, file_index=0))
            (tmp / EPISODES_PATH).parent.mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(episodes), tmp / EPISODES_PATH)
            task_names = sorted(tasks, key=tasks.get)
            task_table = pa.table({"task_index": pa.array([tasks[t] for t in task_names], pa.int64()),
                                   "__index_level_0__": pa.array(task_names, pa.large_string())})
            # LeRobot reads this file with pandas, the task strings being the frame's index: say so.
            pq.write_table(task_table.replace_schema_metadata({"pandas": json.dumps(TASKS_PANDAS_METADATA)}),
                           tmp / "meta/tasks.parquet")
            stats = {name: _stats(np.asarray(columns[name], np.float64).reshape(total, -1))
                     for name in ("action", "timestamp", "frame_index", "episode_index", "index", "task_index")}
            if state_dim:
                stats["observation.state"] = _stats(np.asarray(columns["observation.state"], np.float64))
            for key in cameras:
                frames = np.concatenate(samples[key]).reshape(-1, 3).astype(np.float64) / 255.0
                stats[f"{CAMERA_PREFIX}{key}"] = {k: (np.asarray(v)[:, None, None].tolist() if k != "count" else v)
                                                 for k, v in _stats(frames).items()}
            for key in cameras:
                features[f"{CAMERA_PREFIX}{key}"]["info"] = writers[key].info()
            info = {"codebase_version": CODEBASE_VERSION, "robot_type": None, "total_episodes": len(reader),
                    "total_frames": total, "total_tasks": len(tasks), "chunks_size": 1000,
                    "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
                    "splits": {"train": f"0:{len(reader)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
                    "features": features}
            (tmp / INFO).write_text(json.dumps(info, indent=4))
            (tmp / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    return {"out": str(out), "episodes": len(episodes), "frames": total, "cameras": cameras,
            "repo_id": repo_id or out.name}


def _stats(values: np.ndarray) -> dict:
    """LeRobot's per-feature statistics of [N, D] values."""
    out = {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
           "std": values.std(0).tolist(), "count": [int(len(values))]}
    for q in QUANTILES:
        out[f"q{round(100 * q):02d}"] = np.quantile(values, q, axis=0).tolist()
    return out


class _VideoWriter:
    """Frames appended episode after episode to one mp4; `write` returns the episode's start in seconds."""

    def __init__(self, path: Path, fps: int, crf: int):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps = path, fps
        self.container = av.open(str(path), "w")
        self.stream = None
        self.crf = crf
        self.frames = 0

    def write(self, frames: np.ndarray) -> float:
        import av

        if self.stream is None:
            self.stream = self.container.add_stream("libsvtav1", rate=self.fps,
                                                    options={"crf": str(self.crf), "g": "2", "preset": "8"})
            self.stream.pix_fmt = "yuv420p"
            self.stream.height, self.stream.width = frames.shape[1:3]
            self.stream.time_base = Fraction(1, self.fps)
            self.height, self.width = frames.shape[1:3]
        start = self.frames / self.fps
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            frame.time_base = Fraction(1, self.fps)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.frames += 1
        return start

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    def info(self) -> dict:
        return {"video.height": self.height, "video.width": self.width, "video.codec": "av1",
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": self.fps,
                "video.channels": 3, "has_audio": False}
