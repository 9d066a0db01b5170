"""QLoRA: the pretrained backbone loaded in 4-bit NF4 (bitsandbytes, through transformers), LoRA on top.

The 4-bit base weights are frozen and come from the pretrained directory, so a quantized checkpoint
does not store them: it records the base's path and a content hash (`base_fingerprint`), and loading
reads the base again, refusing one whose files changed. Everything trained (adapters, the action-token
rows, vision, projector) is stored as usual.

Export merges the adapters into the dequantized NF4 weights they were trained against
(`dequantize_and_merge`): the graph computes what the quantized model computed, in float.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from vla.errors import CheckpointError

QUANTIZATIONS = ("none", "nf4")


def bnb_config():
    """NF4 with double quantization (the QLoRA recipe); bf16 compute on a GPU, fp32 on the CPU."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def quantized_device_map():
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"


def _weight_files(source: str) -> tuple[Path, list[Path]]:
    path = Path(source)
    if not path.is_dir():  # a hub id: its files in the local cache (downloaded on the first load)
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"backbone {source}: no *.safetensors to quantize")
    return path, files


def base_fingerprint(source: str) -> dict:
    """{"path", "sha256"}: where the quantized base lives and a hash of its weight files' content."""
    path, files = _weight_files(source)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return {"path": str(path.resolve()), "source": source, "sha256": digest.hexdigest()}


def check_base(recorded: dict) -> str:
    """The base directory a quantized checkpoint was trained on, after checking its content hash."""
    if not recorded or "path" not in recorded:
        raise CheckpointError("a quantized checkpoint must record its base (meta.base); this one does not")
    if not Path(recorded["path"]).is_dir():
        raise CheckpointError(f"the quantized checkpoint's base {recorded['path']} is not there; the adapters were "
                              "trained against it (copy it back, or retrain)")
    now = base_fingerprint(recorded["path"])
    if now["sha256"] != recorded["sha256"]:
        raise CheckpointError(f"the base {recorded['path']} changed since training (sha256 {now['sha256'][:12]}, "
                              f"trained on {recorded['sha256'][:12]}); its adapters do not fit other weights")
    return recorded["path"]


def is_4bit(module: nn.Module) -> bool:
    return type(module).__name__ == "Linear4bit" and hasattr(getattr(module, "weight", None), "quant_state")


def quantized_weight_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the frozen 4-bit base weights (the packed weight and its quantization state)."""
    keys = set()
    prefixes = [f"{name}.weight" for name, module in model.named_modules() if is_4bit(module)]
    if prefixes:
        for key in model.state_dict():
            if any(key == p or key.startswith(p + ".") for p in prefixes):
                keys.add(key)
    return keys


def dequantize(layer: nn.Module) -> torch.Tensor:
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()


def dequantize_and_merge(llama: nn.Module) -> nn.Module:
    """A peft model over a 4-bit base -> a plain float `LlamaForCausalLM`: each LoRA layer becomes one
    nn.Linear holding dequantize(W) + its adapters' delta; the trainable-token rows are merged by peft."""
    from peft.tuners.lora import LoraLayer

    def replace(root: nn.Module, name: str, new: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, child, new)

    def linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        out.weight.data = weight.contiguous()
        if bias is not None:
            out.bias.data = bias.detach().float().clone()
        return out

    for name, module in list(llama.named_modules()):
        if isinstance(module, LoraLayer) and is_4bit(module.get_base_layer()):
            base = module.get_base_layer()
            weight = dequantize(base)
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).float()
            replace(llama, name, linear(weight, base.bias))
    for name, module in list(llama.named_modules()):  # 4-bit layers no adapter covers
        if is_4bit(module):
            replace(llama, name, linear(dequantize(module), module.bias))
    merged = llama.merge_and_unload() if hasattr(llama, "merge_and_unload") else llama
    # Now an ordinary float model: transformers must stop treating it as quantized (it refuses .half()).
    if getattr(merged, "hf_quantizer", None) is not None:
        merged.hf_quantizer.remove_quantization_config(merged)
    return merged.float()
