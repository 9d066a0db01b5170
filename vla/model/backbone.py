"""The Llama backbone: built from a config or loaded with `from_pretrained`; LoRA through peft;
and LLaMA 3.2 Vision's gated cross-attention layers for `fusion: cross_attention`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from vla.errors import CheckpointError
from vla.model.config import BackboneConfig, LoraConfig


def llama_config(config: BackboneConfig, vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        attn_implementation=config.attn_implementation,
    )


def load_pretrained_llama(source: str, attn_implementation: str, quantization: str = "none") -> LlamaForCausalLM:
    """A hub id or a local directory holding config.json and weights; with quantization "nf4", in 4-bit
    (bitsandbytes) and prepared for training adapters on it."""
    path = Path(source)
    if source.startswith((".", "/")) and not (path / "config.json").exists():
        raise CheckpointError(f"backbone {source}: no config.json in that directory")
    kwargs = {}
    if quantization == "nf4":
        from vla.model.quantization import bnb_config, quantized_device_map

        kwargs = {"quantization_config": bnb_config(), "device_map": quantized_device_map()}
    try:
        llama = LlamaForCausalLM.from_pretrained(source, attn_implementation=attn_implementation, dtype=torch.float32,
                                                 **kwargs)
    except OSError as err:
        raise CheckpointError(f"backbone {source}: cannot load ({str(err).splitlines()[0]})") from None
    if quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        llama = prepare_model_for_kbit_training(llama, use_gradient_checkpointing=False)
    return llama


class GatedCrossAttention(nn.Module):
    """Text hidden states attend to image tokens, as LLaMA 3.2 Vision's cross-attention layers do:
    grouped-query attention with RMS-normalized queries and keys, then a SwiGLU MLP, each behind a tanh
    gate that starts at zero, so that at initialisation the backbone computes exactly what it computed
    without images.

    forward(hidden [B, T, H], memory [B, N, H]) -> [B, T, H]
    """

    def __init__(self, hidden: int, heads: int, kv_heads: int, intermediate: int, eps: float = 1e-5):
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"{heads} attention heads do not divide into {kv_heads} key/value heads")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.query = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.key = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.value = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.query_norm = nn.RMSNorm(self.head_dim, eps=eps)
        self.key_norm = nn.RMSNorm(self.head_dim, eps=eps)
        self.out = nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.mlp_norm = nn.RMSNorm(hidden, eps=eps)
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, t, _ = hidden.shape
        n = memory.shape[1]
        d = self.head_dim
        q = self.query_norm(self.query(self.norm(hidden)).view(b, t, self.heads, d)).transpose(1, 2)
        k = self.key_norm(self.key(memory).view(b, n, self.kv_heads, d)).transpose(1, 2)
        v = self.value(memory).view(b, n, self.kv_heads, d).transpose(1, 2)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, self.heads * d)
        hidden = hidden + torch.tanh(self.attn_gate) * self.out(attended)
        x = self.mlp_norm(hidden)
        return hidden + torch.tanh(self.mlp_gate) * self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class CrossAttendingLayer(nn.Module):
    """A decoder layer preceded by a gated cross-attention block. The image tokens are handed
    over through `memory` just before the backbone runs (see `VLA._backbone_forward`)."""

    def __init__(self, layer: nn.Module, cross: GatedCrossAttention):
        super().__init__()
        self.layer = layer
        self.cross = cross
        self.memory: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.memory is None:
            raise RuntimeError("cross-attention layer called without image memory")
        return self.layer(self.cross(hidden_states, self.memory), *args, **kwargs)


def add_cross_attention(llama: LlamaForCausalLM, every: int) -> list[CrossAttendingLayer]:
    """Put a gated cross-attention block before every `every`-th decoder layer (the k-1, 2k-1, ... ones)."""
    cfg = llama.config
    layers = llama.model.layers
    wrapped = []
    for i in range(every - 1, len(layers), every):
        cross = GatedCrossAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                    cfg.intermediate_size, cfg.rms_norm_eps)
        layers[i] = CrossAttendingLayer(layers[i], cross)
        wrapped.append(layers[i])
    if not wrapped:
        raise ValueError(f"cross_attention_every={every} leaves no cross-attention layer in {len(layers)} layers")
    return wrapped


def apply_lora(llama: LlamaForCausalLM, config: LoraConfig, action_token_ids: list[int]) -> nn.Module:
    """Wrap the backbone with LoRA adapters. The base weights freeze; the new action-token rows
    of the embedding and output matrices, and any cross-attention blocks, keep training."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.targets,
        exclude_modules=r".*\.cross\..*",  # the new cross-attention blocks train in full, without adapters
        trainable_token_indices={"embed_tokens": action_token_ids, "lm_head": action_token_ids},
    )
    model = get_peft_model(llama, peft_config)
    for name, param in model.named_parameters():
        if ".cross." in name:
            param.requires_grad_(True)
    return model
