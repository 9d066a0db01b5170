"""The robot computer's install: `pip install vla-robotics` with no extras, in a fresh virtual environment.

    python benchmarks/base_install.py [--venv DIR] [--keep]

Creates the environment with plain dependency resolution, runs `pip check`, lists which of the
training and simulation packages are present (none should be), and prints the installed size and
the time `import policies` takes (best of five fresh interpreters). tests/test_install.py runs the
same steps and then the robot runner inside that environment.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "mujoco", "gymnasium", "timm", "h5py")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def create_base_venv(venv: Path, source: Path = REPO) -> Path:
    """A fresh venv with `pip install <source>` (no extras); raises CalledProcessError on failure."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv_python(venv)
    # The source is copied first: an in-tree build would write build/ and *.egg-info into the clone.
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "*.egg-info", "build",
                                                                     "__pycache__", ".pytest_cache", "data"))
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(copy)],
                       check=True, capture_output=True, text=True)
    return python


def pip_check(python: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)


def present_heavy_packages(python: Path) -> list[str]:
    code = ("import importlib.util, sys; "
            f"print(','.join(m for m in {HEAVY!r} if importlib.util.find_spec(m) is not None))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return [m for m in out.stdout.strip().split(",") if m]


def site_packages_mb(python: Path) -> dict[str, float]:
    """MB per top-level entry of site-packages, largest first."""
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    sizes = {}
    for entry in Path(out.stdout.strip()).iterdir():
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        sizes[entry.name] = sum(f.stat().st_size for f in files) / 1e6
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def import_seconds(python: Path, module: str = "policies", repeats: int = 5) -> float:
    """Best wall time of `python -c "import <module>"` minus that of a bare interpreter."""
    def best(code: str) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([str(python), "-c", code], check=True, cwd=tempfile.gettempdir())
            times.append(time.perf_counter() - start)
        return min(times)

    return best(f"import {module}") - best("pass")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=None, help="where to create it (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the environment")
    args = parser.parse_args()
    venv = args.venv or Path(tempfile.mkdtemp()) / "base-venv"
    if venv.exists():
        shutil.rmtree(venv)
    start = time.perf_counter()
    python = create_base_venv(venv)
    install_s = time.perf_counter() - start
    check = pip_check(python)
    sizes = site_packages_mb(python)
    rows = [
        ("install (venv + pip install .)", f"{install_s:.0f} s"),
        ("pip check", check.stdout.strip() or check.stderr.strip()),
        ("heavy packages present", ", ".join(present_heavy_packages(python)) or "none"),
        ("site-packages size", f"{sum(sizes.values()):.0f} MB"),
        ("largest", ", ".join(f"{name} {mb:.0f} MB" for name, mb in list(sizes.items())[:4])),
        ("import policies", f"{1000 * import_seconds(python):.0f} ms"),
        ("import policies.onnx_policy + onnxruntime",
         f"{1000 * import_seconds(python, 'policies.onnx_policy, onnxruntime'):.0f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if not args.keep:
        shutil.rmtree(venv, ignore_errors=True)
    return 0 if check.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
