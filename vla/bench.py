"""`vla bench`: decision latency of PyTorch eager against onnxruntime, parallel against autoregressive.

The checkpoint's own decoding is measured with its weights. The other decoding is measured on the
same architecture with random weights: latency does not depend on the weights' values, only on
the shapes, and a model trained for one decoding cannot decode the other way.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vla.training.checkpoints import resolve_policy_dir


def _observation(image_size: int, prompt: str, state_dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    obs = {"image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8), "prompt": prompt}
    if state_dim:
        obs["state"] = rng.normal(size=state_dim).astype(np.float32)
    return obs


def time_calls(fn, warmup: int, iters: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out * 1000


def _row(runtime: str, device: str, decoding: str, ms: np.ndarray, chunk: int, batch: int) -> dict:
    p50 = float(np.percentile(ms, 50))
    return {"runtime": runtime, "device": device, "decoding": decoding, "batch": batch, "p50_ms": p50,
            "p99_ms": float(np.percentile(ms, 99)), "per_action_ms": p50 / (chunk * batch),
            "decisions_per_s": 1000.0 * batch / p50}


def _sibling_checkpoint(model, decoding: str, directory: Path) -> Path:
    """The same architecture with the other decoding (random weights), saved as a checkpoint."""
    from vla.model.vla import VLA

    config = type(model.config)(**{**model.config.__dict__, "decoding": decoding})
    torch.manual_seed(0)
    sibling = VLA(config, model.text_tokenizer_file, model.norm_stats, meta=model.meta).eval()
    return sibling.save_pretrained(directory / f"checkpoint-{decoding}")


def bench(path: str | Path, iters: int = 50, warmup: int = 5, batch: int = 1, decodings=("parallel", "autoregressive"),
          prompt: str | None = None, progress: bool = True) -> list[dict]:
    from policies.onnx_policy import OnnxPolicy, _cuda_device_count
    from vla.export import export
    from vla.model.vla import VLA

    resolved = resolve_policy_dir(path)
    if (resolved / "policy.json").exists():
        source = json.loads((resolved / "policy.json").read_text()).get("source")
        if not source or not Path(source).exists():
            raise FileNotFoundError(f"{resolved}: the PyTorch checkpoint it was exported from ({source}) is gone")
        resolved = Path(source)
    model = VLA.from_pretrained(resolved)
    prompt = prompt or _training_prompt(model)
    cuda = torch.cuda.is_available() and _cuda_device_count() > 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for decoding in decodings:
            checkpoint = resolved if decoding == model.config.decoding else _sibling_checkpoint(model, decoding, tmp)
            exported = tmp / f"onnx-{decoding}"
            export(checkpoint, exported, parity_inputs=4)
            torch_model = VLA.from_pretrained(checkpoint)
            obs = [_observation(torch_model.image_size, prompt, torch_model.config.state_dim, i) for i in range(batch)]
            chunk = torch_model.config.chunk_size
            devices = ["cpu"] + (["cuda"] if cuda else [])
            for device in devices:
                torch_model.to(device)
                ms = time_calls(lambda: torch_model.predict_action(obs), warmup, iters)
                rows.append(_row("torch", device, decoding, ms, chunk, batch))
                _say(progress, rows[-1])
            for device, graphs in [("cpu", False)] + ([("cuda", False), ("cuda", True)] if cuda else []):
                policy = OnnxPolicy(exported, device=device, cuda_graphs=graphs, verbose=False)
                ms = time_calls(lambda: policy.act_batch(obs), warmup, iters)
                label = device + ("+cudagraph" if graphs and batch == 1 and decoding == "parallel" else "")
                if graphs and label == device:
                    continue  # CUDA graphs only apply to the parallel graph at batch 1
                rows.append(_row("onnxruntime", label, decoding, ms, chunk, batch))
                _say(progress, rows[-1])
    return rows


def _training_prompt(model) -> str:
    """An instruction of the training data (checkpoints written before it was recorded: a plausible one)."""
    return model.meta.get("example_instruction", "reach the red cube")


def _say(progress: bool, row: dict) -> None:
    if progress:
        print(f"  {row['runtime']:12s} {row['device']:15s} {row['decoding']:15s} p50 {row['p50_ms']:8.2f} ms", flush=True)


def format_table(rows: list[dict]) -> str:
    header = f"{'runtime':12s} {'device':15s} {'decoding':15s} {'batch':>5s} {'p50 ms':>9s} {'p99 ms':>9s} {'ms/action':>10s} {'decisions/s':>12s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['runtime']:12s} {r['device']:15s} {r['decoding']:15s} {r['batch']:5d} {r['p50_ms']:9.2f} "
                     f"{r['p99_ms']:9.2f} {r['per_action_ms']:10.3f} {r['decisions_per_s']:12.1f}")
    return "\n".join(lines)
