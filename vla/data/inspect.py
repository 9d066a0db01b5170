"""`vla data info` and `vla data video`: look inside an episode store."""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from vla.data.store import EpisodeReader, dimension_stats
from vla.errors import DatasetError


def dataset_summary(path: str | Path) -> dict:
    with EpisodeReader(path) as reader:
        attrs = [reader.attrs(i) for i in range(len(reader))]
        actions = reader.actions()
        states = reader.observations("state") if len(reader) else np.zeros((0, 0))
        obs_shapes = {}
        if len(reader):
            first = reader.episode(0)
            obs_shapes = {k: list(v.shape[1:]) for k, v in first.observations.items()}
        return {
            "path": str(path),
            "episodes": len(reader),
            "steps": int(len(actions)),
            "env_args": reader.env_args,
            "observations": obs_shapes,
            "tasks": dict(collections.Counter(a.get("task", "?") for a in attrs)),
            "instructions": dict(collections.Counter(a.get("instruction", "?") for a in attrs)),
            "targets": dict(collections.Counter(a.get("target", "?") for a in attrs)),
            "successes": sum(bool(a.get("success", False)) for a in attrs),
            "action_stats": dimension_stats(actions) if len(actions) else {},
            "state_stats": dimension_stats(states) if len(states) else {},
        }


def format_summary(summary: dict) -> str:
    lines = [
        f"file          {summary['path']}",
        f"episodes      {summary['episodes']} ({summary['successes']} successful)",
        f"steps         {summary['steps']}",
        "observations  " + ", ".join(f"{k} {v}" for k, v in summary["observations"].items()),
        *_env_lines(summary["env_args"]),
        "tasks         " + ", ".join(f"{k} ({v})" for k, v in summary["tasks"].items()),
        "targets       " + ", ".join(f"{k} ({v})" for k, v in sorted(summary["targets"].items())),
        f"instructions  {len(summary['instructions'])} distinct",
    ]
    for text, count in sorted(summary["instructions"].items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"  {count:5d}  {text}")
    for title, stats in (("action", summary["action_stats"]), ("state", summary["state_stats"])):
        if not stats:
            continue
        lines.append(f"{title} statistics per dimension")
        lines.append("  dim      min      max     mean      std      q01      q99")
        for d in range(len(stats["min"])):
            row = "  ".join(f"{stats[k][d]:7.3f}" for k in ("min", "max", "mean", "std", "q01", "q99"))
            lines.append(f"  {d:3d}  {row}")
    return "\n".join(lines)


def write_video(frames: np.ndarray, out: str | Path, fps: float, caption: str = "", scale: int = 2) -> Path:
    """Frames uint8 [T, H, W, 3] (RGB) to an mp4 (MPEG-4 part 2), written to a temporary name first."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1] * scale, frames.shape[2] * scale
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=out.parent)
    os.close(fd)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for frame in frames:
            big = cv2.resize(frame, (width, height), interpolation=cv2.INTER_NEAREST)
            bgr = cv2.cvtColor(big, cv2.COLOR_RGB2BGR)
            if caption:
                cv2.putText(bgr, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            writer.write(bgr)
    finally:
        writer.release()
    os.replace(tmp, out)
    return out


def episode_video(path: str | Path, episode: int, out: str | Path) -> Path:
    with EpisodeReader(path) as reader:
        ep = reader.episode(episode)
        cameras = reader.camera_keys(episode)
    images = [ep.observations[k] for k in cameras]
    if not images:
        raise DatasetError(f"{path}: episode {episode} has no image observations")
    frames = np.concatenate(images, axis=2)  # cameras side by side
    return write_video(frames, out, fps=float(ep.attrs.get("fps", 10)), caption=ep.attrs.get("instruction", ""))


def _env_lines(env_args: dict) -> list[str]:
    """One line per environment the episodes came from, with its settings (a store mixing tasks has several)."""
    settings = env_args.get("task_env_kwargs", {})
    if len(env_args.get("tasks", [])) > 1:
        return [f"{'env' if i == 0 else '':14s}{task} {settings.get(task, {})}" for i, task in enumerate(env_args["tasks"])]
    return [f"env           {_source(env_args)} {env_args.get('env_kwargs', {})}"]


def _source(env_args: dict) -> str:
    """Where the episodes came from: an environment, a suite of them, or outside data (an import)."""
    if env_args.get("env_name"):
        return env_args["env_name"]
    if env_args.get("suite"):
        return f"suite {env_args['suite']}"
    if env_args.get("source"):
        return f"{env_args['source']} import of {env_args.get('root', '?')}"
    return "?"
