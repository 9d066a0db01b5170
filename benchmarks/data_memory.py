"""Training memory and speed with frames read lazily against frames held in memory, on 1x and 4x the data.

    python benchmarks/data_memory.py [--data runs/demo/data/demos.hdf5] [--steps 60]

Each row is a `vla train` run of the demo recipe (its own process) on the store listed once or four
times (four hard links: four files as far as the loader knows, one copy on disk). Peak RssAnon is the
anonymous resident memory (file-backed pages, such as the page cache of the HDF5 reads, do not count)
of the trainer and its DataLoader workers together, sampled every 0.1 s; samples/s is the trainer's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_anon_kb(pid: int) -> int:
    """RssAnon of `pid` and all its descendants, in kB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:")))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
        stack += [int(c) for c in children]
    return total


def run(paths: list[Path], frames: str, workers: int, steps: int, out: Path) -> dict:
    settings = [f"data.paths=[{','.join(map(str, paths))}]", f"data.frames={frames}", f"data.workers={workers}",
                f"steps={steps}", f"checkpoint_every={steps}", "log_every=10"]
    command = [sys.executable, "-m", "vla.cli", "train", "--config", "demo", *[a for s in settings for a in ("--set", s)],
               "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, rss_anon_kb(process.pid))
        time.sleep(0.1)
    if process.returncode:
        raise RuntimeError(process.stderr.read()[-2000:])
    summary = json.loads((out / "train_summary.json").read_text())
    return {"peak_rss_anon_mb": peak / 1024, "samples_per_s": summary["mean_samples_per_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data/demos.hdf5"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"{args.data}: missing (make demo writes it)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=args.data.parent) as tmp:
        copies = []
        for i in range(4):
            link = Path(tmp) / f"copy{i}.hdf5"
            os.link(args.data, link)
            copies.append(link)
        size_mb = args.data.stat().st_size / 1e6
        print(f"{args.data} ({size_mb:.0f} MB on disk), {args.steps} steps of the demo recipe per row\n")
        print("| frames | data | workers | peak RssAnon | samples/s |")
        print("|---|---|---|---|---|")
        for frames, data, workers in (("memory", 1, 0), ("lazy", 1, 0), ("lazy", 1, 1), ("memory", 4, 0),
                                      ("lazy", 4, 0)):
            paths = [args.data] if data == 1 else copies
            row = run(paths, frames, workers, args.steps, Path(tmp) / f"run-{frames}-{data}-{workers}")
            print(f"| {frames} | {data}x | {workers} | {row['peak_rss_anon_mb']:.0f} MB | {row['samples_per_s']:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
