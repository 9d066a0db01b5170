"""A VLA on disk, and what a policy built from it declares.

    DIR/config.json          {"model": ModelConfig, "meta": {llama config, env args, fps, action space, ...}}
    DIR/model.safetensors    weights; a tied tensor (Llama 3.2's embedding and output head) stored once
    DIR/norm_stats.json      q01/q99 etc. per action and state dimension
    DIR/tokenizer.json       the text tokenizer

`policy_spec(model)` is the one place a policy's metadata is built from a model: the export writes
it as policy.json, the PyTorch policy and the server serve it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from policies.lexicon import copy_lexicon
from policies.preprocess import PROMPT_TEMPLATE, ObservationEncoder
from policies.spec import PolicySpec
from vla.atomic import atomic_directory
from vla.config import from_dict, to_dict
from vla.errors import CheckpointError
from vla.model.backbone import load_pretrained_llama
from vla.model.config import ModelConfig
from vla.model.quantization import check_base, quantized_weight_keys
from vla.model.text import TOKENIZER_FILE

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORM_STATS_FILE = "norm_stats.json"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, NORM_STATS_FILE, TOKENIZER_FILE)


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{name: name of the tensor it shares} for every parameter that is another's (tied weights)."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def head_is_tied(model) -> bool:
    """Whether the backbone's output head shares every tensor of its input embedding (Llama 3.2's tied
    weights), also through peft's wrappers (LoRA ties the trainable action-token rows as well)."""
    base = model._llama_base()
    embed = list(base.get_input_embeddings().parameters())
    head = list(base.get_output_embeddings().parameters())
    return bool(head) and all(any(p is q for q in embed) for p in head)


def save_checkpoint(model, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config.json, model.safetensors, norm_stats.json and tokenizer.json, atomically.

    A tied tensor is written once, under its first name; loading ties it again."""
    path = Path(path)
    weights = model.state_dict() if state_dict is None else state_dict
    # Tied tensors are stored once; a 4-bit base (QLoRA) is not stored at all: meta.base names it.
    skip = set(tied_names(model)) | quantized_weight_keys(model)
    tied = tied_names(model)
    weights = {k: v.detach().contiguous() for k, v in weights.items() if k not in skip}
    meta = {**model.meta, "tied_weights": tied}
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps({"model": to_dict(model.config), "meta": meta}, indent=2))
        save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / NORM_STATS_FILE).write_text(json.dumps(model.norm_stats, indent=2))
        shutil.copyfile(model.text_tokenizer_file, tmp / TOKENIZER_FILE)
        copy_lexicon(model.text_tokenizer_file, tmp)
    model.text_tokenizer_file = path / TOKENIZER_FILE
    return path


def load_weights(model, file: Path, strict: bool = True) -> None:
    """Load model.safetensors into `model`; tied tensors, stored once, are shared again."""
    try:
        weights = load_file(str(file))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{file}: cannot load ({str(err).splitlines()[0]})") from None
    tied = tied_names(model)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    expected = set(tied) | quantized_weight_keys(model)  # a 4-bit base was loaded from meta.base already
    missing = [k for k in missing if k not in expected]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{file} does not match {CONFIG_FILE}: "
                              f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    for name, source in tied.items():
        if parameters[name] is not parameters[source]:
            raise CheckpointError(f"{file}: {name} should be tied to {source} but is a separate tensor after loading")
    if model._llama_base().config.tie_word_embeddings and not head_is_tied(model):
        raise CheckpointError(f"{file}: the backbone ties its output head to its embedding, but after loading they "
                              "are separate tensors")


def load_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu"):
    """A checkpoint directory -> the model, in eval mode on `device`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    missing = [name for name in CHECKPOINT_FILES if not (path / name).exists()]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)} (a checkpoint holds {', '.join(CHECKPOINT_FILES)})")
    saved = json.loads((path / CONFIG_FILE).read_text())
    if "model" not in saved:
        raise CheckpointError(f"{path / CONFIG_FILE}: no 'model' section; not a VLA checkpoint")
    config = from_dict(ModelConfig, saved["model"], "model.")
    meta = saved.get("meta", {})
    # Weights come from model.safetensors: build every part without reading any pretrained file, except
    # a 4-bit base (QLoRA), which the checkpoint names instead of storing.
    llama = None
    if config.backbone.quantization != "none":
        base = check_base(meta.get("base", {}))
        llama = load_pretrained_llama(base, config.backbone.attn_implementation, config.backbone.quantization)
    sources = (config.vision.pretrained, config.backbone.pretrained)
    config.vision.pretrained = config.backbone.pretrained = None
    if config.second_vision is not None:
        config.second_vision.pretrained = None
    norm_stats = json.loads((path / NORM_STATS_FILE).read_text())
    model = cls(config, path / TOKENIZER_FILE, norm_stats, llama=llama, meta=meta)
    model.config.vision.pretrained, model.config.backbone.pretrained = sources
    load_weights(model, path / WEIGHTS_FILE)
    return model.to(device).eval()


def policy_spec(model, files: list[str] | None = None, fp16: bool = False) -> PolicySpec:
    """What a policy made from `model` takes and gives: cameras, prompt, state, action space."""
    base = model._llama_base().config
    stats = model.norm_stats
    meta = model.meta
    return PolicySpec(
        decoding=model.config.decoding,
        fusion=model.config.fusion,
        files=list(files or []),
        fp16=fp16,
        image_keys=list(model.config.image_keys),
        image_size=model.image_size,
        prompt_template=PROMPT_TEMPLATE,
        max_prompt_tokens=model.config.max_prompt_tokens,
        bos_id=model.bos_id,
        pad_id=model.pad_id,
        state_dim=model.config.state_dim,
        action_dim=model.config.action_dim,
        action_names=list(meta.get("action_names") or []),
        action_hold=list(meta.get("action_hold") or []),
        chunk_size=model.config.chunk_size,
        prefix_actions=model.config.prefix_actions,
        n_bins=model.config.n_bins,
        vocab_size=model.vocab_size,
        action_low=[float(v) for v in stats["action"]["min"]],
        action_high=[float(v) for v in stats["action"]["max"]],
        norm_stats=stats,
        control_hz=float(meta.get("fps", 10)),
        env_args=meta.get("env_args", {}),
        num_layers=base.num_hidden_layers,
        kv_heads=base.num_key_value_heads,
        head_dim=getattr(base, "head_dim", None) or base.hidden_size // base.num_attention_heads,
    )


def observation_encoder(model) -> ObservationEncoder:
    """The preprocessing of `model`'s policies, training data included."""
    return ObservationEncoder.for_spec(policy_spec(model), model.text_tokenizer_file)
