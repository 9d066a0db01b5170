"""A virtual environment with the real `lerobot` from PyPI, cached outside the clone, keyed by its pins.

lerobot 0.4.4 (the last release that runs on Python 3.11, and it writes dataset format v3.0) pins
torch < 2.11, which conflicts with this project's torch, so it lives in its own environment:
`$VLA_TEST_ENVS` (default ~/.cache/vla/test-envs)/lerobot-<hash of the pins>/. A cold build downloads
several GB (a CUDA build of torch) and takes a few minutes; later runs reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

PINS = ["lerobot==0.4.4"]
READY = ".ready"


def env_dir() -> Path:
    key = hashlib.sha256(" ".join([*PINS, f"py{sys.version_info.major}.{sys.version_info.minor}"]).encode())
    root = Path(os.environ.get("VLA_TEST_ENVS", Path.home() / ".cache" / "vla" / "test-envs"))
    return root / f"lerobot-{key.hexdigest()[:12]}"


def lerobot_python() -> Path:
    """The environment's python, built on first use (one builder at a time: a file lock)."""
    venv = env_dir()
    python = venv / "bin" / "python"
    if (venv / READY).exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / READY).exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
                           check=True)
            (venv / READY).write_text(" ".join(PINS) + "\n")
    return python


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """tests/lerobot_worker.py with `args`, in the lerobot environment, offline."""
    worker = Path(__file__).with_name("lerobot_worker.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([str(lerobot_python()), str(worker), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
