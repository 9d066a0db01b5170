"""ONNX export with a parity check against PyTorch.

Parallel decoding exports one graph, with one image input per camera, named by its key:

    model.onnx   (<camera> uint8 [B,H,W,3] ..., prompt_ids int64 [B,L], prompt_mask int64 [B,L], state float32 [B,S])
                 -> action_ids int64 [B, K*D] (argmax inside the graph), action_logits float32 [B, K*D, n_bins]

Autoregressive decoding exports a prefill graph and a decode-step graph with the KV cache as flat
tensors (past_key_i / past_value_i [B, kv_heads, T, head_dim] for each layer i):

    prefill.onnx (<camera> ..., prompt_ids, prompt_mask, state)
                 -> logits [B, n_bins], token int64 [B], valid int64 [B, P], position int64 [B, 1],
                    present_key_i, present_value_i, (memory [B, N, H] with cross-attention fusion)
    decode.onnx  (token int64 [B, 1], position int64 [B, 1], valid int64 [B, T+1], past_key_i, past_value_i, (memory))
                 -> logits [B, n_bins], token int64 [B], present_key_i, present_value_i

Beside them: policy.json (`policies.spec.PolicySpec`: cameras, preprocessing, action space and
bounds, chunk size, normalization statistics, control rate, decoding), tokenizer.json, and
reference.npz (two inputs with PyTorch's action tokens and logits, which `OnnxPolicy` checks on the
provider it loads on). The export fails if onnxruntime's action tokens differ from PyTorch's on any
of the parity inputs.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from transformers import DynamicCache

from policies.lexicon import copy_lexicon
from policies.onnx_policy import REFERENCE_FILE
from policies.preprocess import trim_prompt_padding
from vla.atomic import atomic_directory
from vla.errors import VLAError
from vla.model.checkpoint import policy_spec
from vla.model.text import TOKENIZER_FILE
from vla.model.vla import VLA, Batch

OPSET = 18


class ExportError(VLAError):
    pass


# ---------------------------------------------------------------------------- graph modules


def _batch(model: VLA, inputs: tuple) -> Batch:
    """Graph inputs, in `_prefix_names` order -> a Batch."""
    named = dict(zip(_prefix_names(model), inputs))
    return Batch({key: named[key] for key in model.image_keys}, named["prompt_ids"], named["prompt_mask"],
                 named.get("state"), prefix_ids=named.get("action_prefix"))


class ParallelGraph(nn.Module):
    def __init__(self, model: VLA):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        batch = _batch(self.model, inputs)
        logits = self.model.action_logits_for(batch)
        ids = self.model.keep_prefix(batch, logits.argmax(-1) + (self.model.vocab_size - self.model.config.n_bins))
        return ids, logits.float()


def _flat_cache(cache: DynamicCache) -> list[torch.Tensor]:
    out = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


class PrefillGraph(nn.Module):
    def __init__(self, model: VLA):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        model = self.model
        embeds, valid, memory = model.embed_prefix(_batch(model, inputs))
        cache = DynamicCache(config=model._llama_base().config)
        positions = valid.long().cumsum(1) - 1
        mask = model.attention_mask(valid, valid.shape[1], 0, embeds.dtype)
        hidden = model._backbone_forward(embeds, mask, positions, memory, cache)
        logits = model.action_logits(hidden[:, -1])
        token = logits.argmax(-1) + (model.vocab_size - model.config.n_bins)
        outputs = [logits.float(), token, valid.long(), positions[:, -1:] + 1, *_flat_cache(cache)]
        if memory is not None:
            outputs.append(memory)
        return tuple(outputs)


class DecodeGraph(nn.Module):
    def __init__(self, model: VLA):
        super().__init__()
        self.model = model
        self.num_layers = model._llama_base().config.num_hidden_layers

    def forward(self, token, position, valid, *past):
        model = self.model
        memory = past[2 * self.num_layers] if len(past) > 2 * self.num_layers else None
        cache = DynamicCache(config=model._llama_base().config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        embeds = model.embed_tokens(token)
        mask = model.attention_mask(valid.bool(), 1, 0, embeds.dtype)
        hidden = model._backbone_forward(embeds, mask, position, memory, cache)
        logits = model.action_logits(hidden[:, -1])
        next_token = logits.argmax(-1) + (model.vocab_size - model.config.n_bins)
        return (logits.float(), next_token, *_flat_cache(cache))


# ---------------------------------------------------------------------------- example inputs


def example_inputs(model: VLA, batch: int, seed: int = 0) -> Batch:
    """Random but valid inputs: noise images, prompts of random length from the text vocabulary."""
    g = torch.Generator().manual_seed(seed)
    size, length = model.image_size, model.config.max_prompt_tokens
    text_vocab = model.vocab_size - model.config.n_bins
    images = {key: torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8)
              for key in model.image_keys}
    lengths = torch.randint(max(1, length // 3), length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] >= (length - lengths)[:, None]).long()  # left-padded
    ids = torch.randint(0, text_vocab, (batch, length), generator=g) * mask + model.pad_id * (1 - mask)
    state = torch.randn(batch, model.config.state_dim, generator=g) if model.config.state_dim else None
    prefix = None
    if model.config.prefix_actions:  # committed prefixes of 0 .. prefix_actions actions
        d = model.config.action_dim
        given = torch.randint(0, model.config.prefix_actions + 1, (batch, 1), generator=g) * d
        tokens = torch.randint(text_vocab, model.vocab_size, (batch, model.config.action_tokens), generator=g)
        prefix = torch.where(torch.arange(model.config.action_tokens)[None] < given, tokens, -1)
    return Batch(images, ids, mask, state, prefix_ids=prefix)


def _inputs(batch: Batch) -> tuple:
    return tuple(batch.feeds().values())


def _prefix_names(model: VLA) -> list[str]:
    return ([*model.image_keys, "prompt_ids", "prompt_mask"] + (["state"] if model.config.state_dim else [])
            + (["action_prefix"] if model.config.prefix_actions else []))


def _kv_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


# ---------------------------------------------------------------------------- export


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, opset_version=OPSET, external_data=False, verbose=False,
        )
    program.save(str(path))


def _prefix_dynamic_shapes(model: VLA) -> tuple:
    """Batch is dynamic; so is the prompt's length, so that a policy can drop the columns that
    are padding in every row (prompts are left-padded) and run a shorter sequence."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    prompt = torch.export.Dim("prompt", min=1, max=model.config.max_prompt_tokens)
    shapes = {"prompt_ids": {0: batch, 1: prompt}, "prompt_mask": {0: batch, 1: prompt}}
    # forward(*inputs): the variadic inputs are one nested entry
    return (tuple(shapes.get(name, {0: batch}) for name in _prefix_names(model)),)


def export_parallel(model: VLA, out: Path) -> list[str]:
    example = example_inputs(model, batch=2)
    names = _prefix_names(model)
    _export(ParallelGraph(model), _inputs(example), out / "model.onnx", names, ["action_ids", "action_logits"],
            _prefix_dynamic_shapes(model))
    return ["model.onnx"]


def export_autoregressive(model: VLA, out: Path) -> list[str]:
    layers = model._llama_base().config.num_hidden_layers
    cross = model.config.fusion == "cross_attention"
    example = example_inputs(model, batch=2)
    names = _prefix_names(model)
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    prefill_out = ["logits", "token", "valid", "position", *_kv_names("present", layers)] + (["memory"] if cross else [])
    _export(PrefillGraph(model), _inputs(example), out / "prefill.onnx", names, prefill_out,
            _prefix_dynamic_shapes(model))

    # The decode step's example: the prefill's outputs for the same inputs, one token later.
    with torch.no_grad():
        pre = PrefillGraph(model)(*_inputs(example))
    token, valid, position = pre[1].unsqueeze(1), pre[2], pre[3]
    past = list(pre[4 : 4 + 2 * layers]) + ([pre[-1]] if cross else [])
    valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    past_len = torch.export.Dim("past", min=1, max=8192)
    total_len = past_len + 1
    past_dynamic = [{0: batch_dim, 2: past_len} for _ in range(2 * layers)] + ([{0: batch_dim}] if cross else [])
    # forward(token, position, valid, *past): the variadic part is one nested entry.
    dynamic = [{0: batch_dim}, {0: batch_dim}, {0: batch_dim, 1: total_len}, tuple(past_dynamic)]
    decode_in = ["token", "position", "valid", *_kv_names("past", layers)] + (["memory"] if cross else [])
    decode_out = ["logits", "next_token", *_kv_names("present", layers)]
    _export(DecodeGraph(model), (token, position, valid, *past), out / "decode.onnx", decode_in, decode_out, tuple(dynamic))
    return ["prefill.onnx", "decode.onnx"]


def export(checkpoint: str | Path, out: str | Path, fp16: bool = False, parity_inputs: int = 32,
           overwrite: bool = False) -> dict:
    """Export a checkpoint directory to `out`; returns policy.json's content with the parity report."""
    from vla.training.checkpoints import resolve_policy_dir

    checkpoint = resolve_policy_dir(checkpoint)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite")
    trained = VLA.from_pretrained(checkpoint).eval()
    quantized = trained if trained.config.backbone.quantization != "none" else None
    model = (VLA.from_pretrained(checkpoint) if quantized is not None else trained).merge_lora().eval()
    reference = model
    if fp16:
        model = VLA.from_pretrained(checkpoint).merge_lora().eval().half()
    with atomic_directory(out) as tmp:
        if model.config.decoding == "parallel":
            files = export_parallel(model, tmp)
        else:
            files = export_autoregressive(model, tmp)
        shutil.copyfile(model.text_tokenizer_file, tmp / TOKENIZER_FILE)
        copy_lexicon(model.text_tokenizer_file, tmp)
        spec = policy_spec(model, files, fp16)
        spec.source = str(checkpoint)
        spec.reference = write_reference(reference, tmp / REFERENCE_FILE)
        spec.save(tmp)
        spec.parity = check_parity(reference, tmp, parity_inputs, fp16, quantized) if parity_inputs > 0 else None
        spec.save(tmp)
    return spec.to_dict()


def write_reference(model: VLA, path: Path, samples: int = 2) -> str:
    """Inputs (prompts at their full padded length, as a CUDA graph takes them) with PyTorch's action
    tokens and logits, for `OnnxPolicy` to check the provider it loads on."""
    batch = example_inputs(model, batch=samples, seed=7)
    with torch.no_grad():
        ids = model.predict_action_ids(batch)
        logits = model.action_logits_for(dataclasses.replace(batch, action_ids=ids))
    arrays = {name: value.numpy() for name, value in batch.feeds().items()}
    np.savez(path, **arrays, expected_action_ids=ids.numpy(), expected_action_logits=logits.float().numpy())
    return path.name


FP16_RELATIVE_TOLERANCE = 0.02  # of the largest logit magnitude
FP16_TOKEN_MISMATCH = 0.01  # fraction of action tokens allowed to differ in fp16


def check_parity(model: VLA, exported: Path, num_inputs: int, fp16: bool, quantized: VLA | None = None) -> dict:
    """Action tokens and logits of onnxruntime (CPU) against PyTorch on random inputs, in batches of 1 and 4.

    With `quantized` (the QLoRA model as trained: a 4-bit base under its adapters) the report also
    gives the share of action tokens on which it agrees with the exported graph."""
    from policies.onnx_policy import OnnxPolicy

    runtime = OnnxPolicy(exported, device="cpu", verbose=False, check_reference=False)
    max_logit_diff = max_abs_logit = 0.0
    mismatched = total = agreeing = 0
    seen = 0
    seed = 1000
    while seen < num_inputs:
        size = 1 if seen < num_inputs // 2 else 4
        batch = example_inputs(model, batch=size, seed=seed)
        if seed % 2:  # what policies run: the columns that are padding in every row dropped
            batch.prompt_ids, batch.prompt_mask = trim_prompt_padding(batch.prompt_ids, batch.prompt_mask)
        seed += 1
        with torch.no_grad():
            torch_ids = model.predict_action_ids(batch).numpy()
            torch_logits = model.action_logits_for(dataclasses.replace(batch, action_ids=torch.from_numpy(torch_ids)))
            torch_logits = torch_logits.numpy()
        ort_ids, ort_logits = runtime.run_tokens({name: value.numpy() for name, value in batch.feeds().items()})
        mismatched += int((ort_ids != torch_ids).sum())
        total += torch_ids.size
        if quantized is not None:
            with torch.no_grad():
                agreeing += int((quantized.predict_action_ids(batch).numpy() == ort_ids).sum())
        max_logit_diff = max(max_logit_diff, float(np.abs(ort_logits - torch_logits).max()))
        max_abs_logit = max(max_abs_logit, float(np.abs(torch_logits).max()))
        seen += size
    # fp16 keeps about three significant digits, and the error grows through the layers: its
    # tolerance is relative to the logits' magnitude, and a token whose top two logits are within
    # that error may flip.
    tolerance = FP16_RELATIVE_TOLERANCE * max(max_abs_logit, 1.0) if fp16 else 1e-4
    report = {"inputs": seen, "tokens": total, "mismatched_tokens": mismatched, "max_logit_diff": max_logit_diff,
              "logit_tolerance": tolerance, "runtime": "onnxruntime CPUExecutionProvider"}
    if quantized is not None:
        report["quantized_agreement"] = agreeing / total  # the 4-bit model with adapters vs the merged graph
    token_ok = mismatched == 0 if not fp16 else mismatched <= FP16_TOKEN_MISMATCH * total
    if not token_ok or max_logit_diff > tolerance:
        raise ExportError(
            f"parity check failed: {mismatched}/{total} action tokens differ, max logit difference "
            f"{max_logit_diff:.2e} (tolerance {tolerance:g}); the exported graphs do not match PyTorch"
        )
    return report
