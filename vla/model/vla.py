"""The VLA: image encoder and projector feeding a Llama that decodes discretized action tokens.

Sequence layout (prefix fusion):

    [BOS] [image tokens x N] [state] [prompt tokens, left-padded to L] [action positions x K*D]

With cross-attention fusion the image tokens leave the sequence and are read by gated
cross-attention blocks instead. Pads are masked out and position ids follow the mask, so the
padding length never changes the output.

Decoding:
    parallel        the K*D action positions hold learned queries and attend to each other
                    bidirectionally; one forward pass gives the whole chunk (OpenVLA-OFT).
    autoregressive  action tokens are fed back one at a time with a KV cache (OpenVLA).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model, save_file, save_model
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from policies.actions import ActionTokenizer
from policies.preprocess import PromptTokenizer, normalize_state, resize_image, trim_prompt_padding
from vla.atomic import atomic_directory
from vla.config import from_dict, to_dict
from vla.errors import CheckpointError
from vla.model.backbone import (
    CrossAttendingLayer,
    add_cross_attention,
    apply_lora,
    llama_config,
    load_pretrained_llama,
)
from vla.model.config import ModelConfig
from vla.model.text import TOKENIZER_FILE, special_ids
from vla.model.vision import VisionTower

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORM_STATS_FILE = "norm_stats.json"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, NORM_STATS_FILE, TOKENIZER_FILE)
IGNORE_INDEX = -100


class FilmInputNorm(nn.Module):
    """Standardizes the pooled prompt embedding per channel across samples, then scales it to unit length.

    Every prompt shares the template ("In: What action should the robot take to ..."), so the raw mean
    of its embeddings is mostly the same vector for every instruction; standardizing across samples
    (batch statistics in training, running ones at inference, as BatchNorm) removes that shared part
    and leaves what tells instructions apart. Unit length (not unit variance per channel) keeps FiLM's
    scales moving by ~lr per Adam step instead of ~lr * sqrt(width), which washed the image out.
    """

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training and len(pooled) == 1:  # batch statistics need two samples
            self.norm.eval()
            out = self.norm(pooled)
            self.norm.train()
        else:
            out = self.norm(pooled)
        return out / pooled.shape[-1] ** 0.5


class AuxiliaryHead(nn.Module):
    """Training only: predicts the action chunk (from the image tokens and the state), or the named
    object's position (from the image tokens alone), straight from the vision tower.

    A fresh backbone reads the image tokens weakly at first, so the vision tower gets little signal
    and learns to be ignored; this short path gives it a direct one (deep supervision). It is not
    part of any exported graph.

    forward(image_tokens [B, N, H], state [B, S] | None) -> [B, out_dim]
    """

    def __init__(self, hidden: int, state_dim: int, out_dim: int, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.state = nn.Linear(state_dim, hidden) if state_dim else None
        self.mlp = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, image_tokens: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        query = self.query.expand(len(image_tokens), -1, -1).to(image_tokens.dtype)
        pooled = self.attention(query, image_tokens, image_tokens, need_weights=False)[0][:, 0]
        if self.state is not None and state is not None:
            pooled = pooled + self.state(state.to(pooled.dtype))
        return self.mlp(pooled)


def _scaled_rms_norm(width: int, scale: float) -> nn.RMSNorm:
    norm = nn.RMSNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.fill_(scale)
    return norm


@dataclass
class Batch:
    """Model inputs. Shapes: images uint8 [B, H, W, 3]; prompt_ids, prompt_mask int64 [B, L];
    state float32 [B, S] (normalized) or None; action_ids int64 [B, K*D] (training targets,
    IGNORE_INDEX where a chunk runs past the episode's end)."""

    images: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    state: torch.Tensor | None = None
    action_ids: torch.Tensor | None = None
    aux_target: torch.Tensor | None = None  # float [B, A]: what the auxiliary head should predict
    aux_mask: torch.Tensor | None = None  # float [B, A]: 1 where aux_target counts

    def to(self, device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) if t is not None else None for t in
                       (self.images, self.prompt_ids, self.prompt_mask, self.state, self.action_ids,
                        self.aux_target, self.aux_mask)))


class VLA(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        text_tokenizer_file: str | Path,
        norm_stats: dict,
        llama: LlamaForCausalLM | None = None,
        meta: dict | None = None,
    ):
        """Build the architecture. `llama` is a loaded backbone (pretrained); without it one is built
        from `config.backbone` or from `meta["llama"]` (when loading a saved checkpoint)."""
        super().__init__()
        self.config = config
        self.norm_stats = norm_stats
        self.meta = dict(meta or {})
        self.text_tokenizer_file = Path(text_tokenizer_file)
        from tokenizers import Tokenizer

        text_tokenizer = Tokenizer.from_file(str(self.text_tokenizer_file))
        self.bos_id, self.pad_id = special_ids(text_tokenizer)
        self.prompt_tokenizer = PromptTokenizer(self.text_tokenizer_file, config.max_prompt_tokens, self.pad_id)

        if llama is None:
            if "llama" in self.meta:
                llama_cfg = LlamaConfig.from_dict(self.meta["llama"])
                llama_cfg._attn_implementation = config.backbone.attn_implementation
            else:
                llama_cfg = llama_config(config.backbone, text_tokenizer.get_vocab_size() + config.n_bins)
            llama = LlamaForCausalLM(llama_cfg)
        elif "llama" not in self.meta:
            # A pretrained backbone: append the action tokens after its text vocabulary.
            llama.resize_token_embeddings(llama.config.vocab_size + config.n_bins)
        self.meta["llama"] = llama.config.to_dict()
        self.vocab_size = llama.config.vocab_size
        hidden = llama.config.hidden_size

        self.action_tokenizer = ActionTokenizer(norm_stats["action"], self.vocab_size, config.n_bins)
        if self.action_tokenizer.dim != config.action_dim:
            raise CheckpointError(
                f"norm_stats has {self.action_tokenizer.dim} action dimensions, the model config {config.action_dim}"
            )
        self.vision = VisionTower(config.vision, config.second_vision, config.projector, hidden,
                                  film_dim=hidden if config.film else 0)
        self.film_norm = FilmInputNorm(hidden) if config.film else None
        self.state_proj = nn.Linear(config.state_dim, hidden) if config.state_dim else None
        # Image and state tokens enter at the scale of the text embeddings. Unscaled, a fresh projector
        # gives them norms ~100x those of the words, so the residual stream at image positions can
        # hardly take in anything from the instruction.
        token_rms = float(llama.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())
        self.image_norm = _scaled_rms_norm(hidden, token_rms)
        self.state_norm = _scaled_rms_norm(hidden, token_rms) if config.state_dim else None
        self.action_queries = (
            nn.Parameter(torch.randn(config.action_tokens, hidden) * 0.02) if config.decoding == "parallel" else None
        )
        self.aux_head = None
        if config.aux_loss != "none":
            out_dim = config.action_tokens if config.aux_loss == "actions" else 3
            self.aux_head = AuxiliaryHead(hidden, config.state_dim if config.aux_loss == "actions" else 0, out_dim)
        self._cross_layers: list[CrossAttendingLayer] = []
        if config.fusion == "cross_attention":
            self._cross_layers = add_cross_attention(llama, config.cross_attention_every)
        if config.lora.rank > 0:
            action_ids = list(range(self.vocab_size - config.n_bins, self.vocab_size))
            llama = apply_lora(llama, config.lora, action_ids)
        self.llama = llama

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, config: ModelConfig, text_tokenizer_file: str | Path, norm_stats: dict, meta: dict | None = None) -> VLA:
        """A new model for training: random init, or pretrained weights where the config names them."""
        llama = None
        if config.backbone.pretrained:
            llama = load_pretrained_llama(config.backbone.pretrained, config.backbone.attn_implementation)
        return cls(config, text_tokenizer_file, norm_stats, llama=llama, meta=meta)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> VLA:
        """Load a checkpoint directory written by `save_pretrained`."""
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
        # Weights come from model.safetensors: build every part without downloading anything.
        config.vision.pretrained = None
        if config.second_vision is not None:
            config.second_vision.pretrained = None
        config.backbone.pretrained = None
        norm_stats = json.loads((path / NORM_STATS_FILE).read_text())
        model = cls(config, path / TOKENIZER_FILE, norm_stats, meta=saved.get("meta", {}))
        model.config.vision.pretrained = saved["model"]["vision"].get("pretrained")
        model.config.backbone.pretrained = saved["model"]["backbone"].get("pretrained")
        try:
            missing_keys, unexpected = load_model(model, path / WEIGHTS_FILE, strict=False, device=str(device))
        except Exception as err:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{path / WEIGHTS_FILE}: cannot load ({str(err).splitlines()[0]})") from None
        if missing_keys or unexpected:
            raise CheckpointError(
                f"{path / WEIGHTS_FILE} does not match {CONFIG_FILE}: "
                f"missing {sorted(missing_keys)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )
        return model.to(device).eval()

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write config.json, model.safetensors, norm_stats.json and tokenizer.json, atomically.

        `state_dict` replaces this module's own weights (a sharded model's, gathered)."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps({"model": to_dict(self.config), "meta": self.meta}, indent=2))
            if state_dict is None:
                save_model(self, str(tmp / WEIGHTS_FILE))
            else:
                save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS_FILE))
            (tmp / NORM_STATS_FILE).write_text(json.dumps(self.norm_stats, indent=2))
            shutil.copyfile(self.text_tokenizer_file, tmp / TOKENIZER_FILE)
        self.text_tokenizer_file = path / TOKENIZER_FILE
        return path

    def merge_lora(self) -> VLA:
        """Fold LoRA adapters into the base weights (for export); the model then saves without peft."""
        if self.config.lora.rank > 0:
            self.llama = self.llama.merge_and_unload()
            self.config.lora.rank = 0
        return self

    # ------------------------------------------------------------------ pieces
    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_tokens

    def _llama_base(self) -> LlamaForCausalLM:
        return self.llama.get_base_model() if hasattr(self.llama, "get_base_model") else self.llama

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self._llama_base().get_input_embeddings()(ids)

    def action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] -> logits over the action bins only [..., n_bins]."""
        return self._llama_base().get_output_embeddings()(hidden)[..., -self.config.n_bins :]

    def _check(self, batch: Batch) -> None:
        b = batch.images.shape[0]
        size = self.image_size
        if batch.images.dtype != torch.uint8 or tuple(batch.images.shape[1:]) != (size, size, 3):
            raise ValueError(f"images must be uint8 [B, {size}, {size}, 3], got {batch.images.dtype} {list(batch.images.shape)}")
        if batch.prompt_ids.shape != batch.prompt_mask.shape or batch.prompt_ids.shape[0] != b:
            raise ValueError(f"prompt_ids and prompt_mask must both be [B={b}, L], got {list(batch.prompt_ids.shape)} "
                             f"and {list(batch.prompt_mask.shape)}")
        if self.config.state_dim:
            if batch.state is None or tuple(batch.state.shape) != (b, self.config.state_dim):
                got = None if batch.state is None else list(batch.state.shape)
                raise ValueError(f"state must be [B={b}, {self.config.state_dim}], got {got}")

    def encode_images(self, batch: Batch) -> torch.Tensor:
        """Projected image tokens [B, N, H], conditioned on the instruction when FiLM is on."""
        film = None
        if self.config.film:
            prompt = self.embed_tokens(batch.prompt_ids)
            weights = batch.prompt_mask.unsqueeze(-1).to(prompt.dtype)
            pooled = (prompt * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            film = self.film_norm(pooled)
        return self.vision(batch.images, film)

    def embed_prefix(self, batch: Batch, image_tokens: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> prefix embeddings [B, P, H], prefix validity [B, P] (bool), image memory [B, N, H] or None."""
        b = batch.images.shape[0]
        prompt = self.embed_tokens(batch.prompt_ids)
        prompt_valid = batch.prompt_mask.bool()
        if image_tokens is None:
            image_tokens = self.encode_images(batch)
        image_tokens = self.image_norm(image_tokens)
        parts = [self.embed_tokens(torch.full((b, 1), self.bos_id, device=prompt.device))]
        memory = None
        if self.config.fusion == "prefix":
            parts.append(image_tokens)
        else:
            memory = image_tokens
        if self.state_proj is not None:
            parts.append(self.state_norm(self.state_proj(batch.state.to(prompt.dtype))).unsqueeze(1))
        parts.append(prompt)
        embeds = torch.cat(parts, dim=1)
        fixed = embeds.shape[1] - prompt.shape[1]
        valid = torch.cat([torch.ones(b, fixed, dtype=torch.bool, device=prompt.device), prompt_valid], dim=1)
        return embeds, valid, memory

    def attention_mask(self, valid: torch.Tensor, query_len: int, bidirectional_tail: int, dtype: torch.dtype) -> torch.Tensor:
        """4D mask [B, 1, Q, S] for the last Q of S positions: causal, pads hidden as keys, and the
        last `bidirectional_tail` positions attending to each other (parallel decoding)."""
        s = valid.shape[1]
        device = valid.device
        q_pos = torch.arange(s - query_len, s, device=device).unsqueeze(1)
        k_pos = torch.arange(s, device=device).unsqueeze(0)
        allowed = k_pos <= q_pos
        if bidirectional_tail:
            tail = s - bidirectional_tail
            allowed = allowed | ((q_pos >= tail) & (k_pos >= tail))
        allowed = allowed.unsqueeze(0) & valid.unsqueeze(1)
        allowed = allowed.unsqueeze(1)
        if self.config.backbone.attn_implementation == "eager":
            return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed

    def _backbone_forward(self, embeds, mask4d, position_ids, memory, cache=None) -> torch.Tensor:
        for layer in self._cross_layers:
            layer.memory = memory
        try:
            out = self._llama_base().model(
                inputs_embeds=embeds,
                attention_mask=mask4d,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
            )
        finally:
            for layer in self._cross_layers:
                layer.memory = None
        return out.last_hidden_state

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Teacher-forced pass. Returns loss (cross-entropy on action tokens only), token accuracy,
        and the predicted action ids [B, K*D]."""
        self._check(batch)
        if batch.action_ids is None:
            raise ValueError("forward needs batch.action_ids; use predict_action_ids for inference")
        image_tokens = self.encode_images(batch)
        logits = self.action_logits_for(batch, image_tokens)
        bins = batch.action_ids - (self.vocab_size - self.config.n_bins)
        labels = torch.where(batch.action_ids == IGNORE_INDEX, IGNORE_INDEX, bins)
        # Averaged over all action positions (ignored ones count as zero), not over the valid ones, so
        # the loss of a batch is the mean of its shards' losses, however it is split across processes.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum") / labels.numel()
        predicted = logits.argmax(-1)
        counted = labels != IGNORE_INDEX
        accuracy = ((predicted == labels) & counted).sum() / counted.sum().clamp(min=1)
        out = {"loss": loss, "accuracy": accuracy, "predicted_ids": predicted + (self.vocab_size - self.config.n_bins)}
        if self.aux_head is not None and batch.aux_target is not None:
            predicted_aux = self.aux_head(image_tokens, batch.state)
            mask = batch.aux_mask if batch.aux_mask is not None else torch.ones_like(batch.aux_target)
            aux = ((predicted_aux.float() - batch.aux_target) ** 2 * mask).sum() / mask.numel()
            out["aux_loss"] = aux
            out["loss"] = loss + self.config.aux_weight * aux
        return out

    def action_logits_for(self, batch: Batch, image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over action bins at every action position, [B, K*D, n_bins], teacher-forced for AR."""
        embeds, valid, memory = self.embed_prefix(batch, image_tokens)
        b, p = valid.shape
        n = self.config.action_tokens
        if self.config.decoding == "parallel":
            tail = self.action_queries.unsqueeze(0).expand(b, -1, -1).to(embeds.dtype)
            bidirectional = n
        else:
            previous = batch.action_ids[:, :-1].clamp(min=0)  # ignored positions still need some input
            tail = self.embed_tokens(previous)
            bidirectional = 0
        embeds = torch.cat([embeds, tail], dim=1)
        valid = torch.cat([valid, torch.ones(b, tail.shape[1], dtype=torch.bool, device=valid.device)], dim=1)
        positions = valid.long().cumsum(1) - 1
        mask = self.attention_mask(valid, valid.shape[1], bidirectional, embeds.dtype)
        hidden = self._backbone_forward(embeds, mask, positions, memory)
        start = p if self.config.decoding == "parallel" else p - 1
        return self.action_logits(hidden[:, start : start + n])

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action_ids(self, batch: Batch, use_cache: bool = True) -> torch.Tensor:
        """Greedy action tokens [B, K*D]."""
        self._check(batch)
        offset = self.vocab_size - self.config.n_bins
        if self.config.decoding == "parallel":
            return self.action_logits_for(batch).argmax(-1) + offset
        embeds, valid, memory = self.embed_prefix(batch)
        if not use_cache:
            return self._generate_without_cache(embeds, valid, memory) + offset
        b = embeds.shape[0]
        cache = DynamicCache(config=self._llama_base().config)
        positions = valid.long().cumsum(1) - 1
        hidden = self._backbone_forward(embeds, self.attention_mask(valid, valid.shape[1], 0, embeds.dtype), positions, memory, cache)
        tokens = []
        next_position = positions[:, -1:] + 1
        for step in range(self.config.action_tokens):
            token = self.action_logits(hidden[:, -1]).argmax(-1)
            tokens.append(token)
            if step == self.config.action_tokens - 1:
                break
            valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=valid.device)], dim=1)
            step_embeds = self.embed_tokens((token + offset).unsqueeze(1))
            mask = self.attention_mask(valid, 1, 0, embeds.dtype)
            hidden = self._backbone_forward(step_embeds, mask, next_position, memory, cache)
            next_position = next_position + 1
        return torch.stack(tokens, dim=1) + offset

    def _generate_without_cache(self, embeds, valid, memory) -> torch.Tensor:
        """Reference decoding that recomputes the whole sequence each step (for tests)."""
        offset = self.vocab_size - self.config.n_bins
        tokens = []
        for _ in range(self.config.action_tokens):
            positions = valid.long().cumsum(1) - 1
            mask = self.attention_mask(valid, valid.shape[1], 0, embeds.dtype)
            hidden = self._backbone_forward(embeds, mask, positions, memory)
            token = self.action_logits(hidden[:, -1]).argmax(-1)
            tokens.append(token)
            embeds = torch.cat([embeds, self.embed_tokens((token + offset).unsqueeze(1))], dim=1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        return torch.stack(tokens, dim=1)

    def prepare(self, observations: list[dict]) -> Batch:
        """Raw observations (image uint8 HxWx3 of any size, prompt str, state) -> a batch on the model's device."""
        if not observations:
            raise ValueError("no observations")
        images, ids, masks, states = [], [], [], []
        for obs in observations:
            if "image" not in obs:
                raise ValueError("observation is missing 'image'")
            prompt = obs.get("prompt", obs.get("instruction"))
            if prompt is None:
                raise ValueError("observation is missing 'prompt' (the instruction)")
            images.append(resize_image(obs["image"], self.image_size))
            prompt_ids, prompt_mask = self.prompt_tokenizer(prompt)
            ids.append(prompt_ids)
            masks.append(prompt_mask)
            if self.config.state_dim:
                if "state" not in obs:
                    raise ValueError(f"observation is missing 'state' ({self.config.state_dim} values)")
                states.append(normalize_state(obs["state"], self.norm_stats["state"]))
        device = next(self.parameters()).device
        ids, masks = trim_prompt_padding(np.stack(ids), np.stack(masks))
        return Batch(
            images=torch.from_numpy(np.stack(images)).to(device),
            prompt_ids=torch.from_numpy(ids).to(device),
            prompt_mask=torch.from_numpy(masks).to(device),
            state=torch.from_numpy(np.stack(states)).to(device) if states else None,
        )

    @torch.no_grad()
    def predict_action(self, observations: dict | list[dict]) -> np.ndarray:
        """Observation dict(s) -> actions [K, D] (or [B, K, D] for a list), un-normalized."""
        single = isinstance(observations, dict)
        batch = self.prepare([observations] if single else observations)
        ids = self.predict_action_ids(batch).cpu().numpy()
        actions = self.action_tokenizer.decode(ids.reshape(len(ids), self.config.chunk_size, self.config.action_dim))
        return actions[0] if single else actions
