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

import inspect
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlamaModel

from policies.actions import ActionTokenizer
from vla.errors import CheckpointError
from vla.model.backbone import (
    CrossAttendingLayer,
    add_cross_attention,
    apply_lora,
    llama_config,
    load_pretrained_llama,
)
from vla.model.config import ModelConfig
from vla.model.text import special_ids
from vla.model.vision import VisionTower

IGNORE_INDEX = -100
# transformers 5.x renamed LlamaModel.forward's `past_key_values` to `cache` (the old name warns on every call).
_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


class FilmInputNorm(nn.Module):
    """Standardizes the pooled prompt embedding per channel across samples, then scales it to unit length.

    Every prompt shares the template ("In: What action should the robot take to ..."), so the raw mean
    of its embeddings is mostly the same vector for every instruction; standardizing across samples
    (batch statistics in training, running ones at inference, as BatchNorm) removes that shared part
    and leaves what tells instructions apart. Unit length (not unit variance per channel) keeps FiLM's
    scales moving by ~lr per Adam step instead of ~lr * sqrt(width), which washed the image out.

    In training the batch statistics are those of the whole global batch: under DDP or FSDP each
    process all-reduces its sums (a differentiable all-reduce, which gloo runs on CPUs too), so N
    processes normalize exactly as one process does with the same batch.
    """

    def __init__(self, width: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [B, W] -> [B, W]."""
        x = pooled.float()
        if self.training:
            count = torch.tensor([float(len(x))], device=x.device)
            sums = torch.cat([x.sum(0), (x * x).sum(0), count])
            if torch.distributed.is_available() and torch.distributed.is_initialized() \
                    and torch.distributed.get_world_size() > 1:
                from torch.distributed.nn.functional import all_reduce

                sums = all_reduce(sums)
            width = x.shape[-1]
            n = sums[-1]
        if self.training and n > 1:  # batch statistics need two samples
            mean = sums[:width] / n
            var = (sums[width : 2 * width] / n - mean * mean).clamp(min=0.0)
            with torch.no_grad():
                unbiased = var * n / (n - 1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        out = (x - mean) / torch.sqrt(var + self.eps)
        return (out / pooled.shape[-1] ** 0.5).to(pooled.dtype)


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
    """Model inputs. Shapes: images {camera key: uint8 [B, H, W, 3]}; prompt_ids, prompt_mask int64 [B, L];
    state float32 [B, S] (normalized) or None; action_ids int64 [B, K*D] (training targets,
    IGNORE_INDEX where a chunk runs past the episode's end)."""

    images: dict[str, torch.Tensor]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    state: torch.Tensor | None = None
    action_ids: torch.Tensor | None = None
    aux_target: torch.Tensor | None = None  # float [B, A]: what the auxiliary head should predict
    aux_mask: torch.Tensor | None = None  # float [B, A]: 1 where aux_target counts
    prefix_ids: torch.Tensor | None = None  # int64 [B, K*D]: committed action tokens, -1 where not given

    def to(self, device) -> Batch:
        def move(value):
            if isinstance(value, dict):
                return {k: v.to(device, non_blocking=True) for k, v in value.items()}
            return value.to(device, non_blocking=True) if value is not None else None

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def select(self, index) -> Batch:
        """The rows `index` (a slice, an index tensor) of every field."""
        def pick(value):
            if isinstance(value, dict):
                return {k: v[index] for k, v in value.items()}
            return value[index] if value is not None else None

        return Batch(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def from_feeds(cls, feeds: dict[str, np.ndarray], image_keys: list[str], device="cpu") -> Batch:
        """The observation encoder's numpy arrays (`policies.preprocess.ObservationEncoder`) -> a Batch."""
        def tensor(name):
            return torch.from_numpy(np.ascontiguousarray(feeds[name])).to(device)

        return cls(images={key: tensor(key) for key in image_keys}, prompt_ids=tensor("prompt_ids"),
                   prompt_mask=tensor("prompt_mask"), state=tensor("state") if "state" in feeds else None,
                   prefix_ids=tensor("action_prefix") if "action_prefix" in feeds else None)

    def feeds(self) -> dict[str, torch.Tensor]:
        """The inputs by graph input name: one per camera key, then prompt, state and action prefix."""
        out = {**self.images, "prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask}
        if self.state is not None:
            out["state"] = self.state
        if self.prefix_ids is not None:
            out["action_prefix"] = self.prefix_ids
        return out


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
        if not config.image_keys:
            config.image_keys = ["image"]
        # Dimensions the config leaves open are the data's (its normalization statistics).
        if config.action_dim is None:
            config.action_dim = len(norm_stats["action"]["q01"])
        if config.state_dim is None:
            config.state_dim = len(norm_stats["state"]["q01"]) if "state" in norm_stats else 0
        self.config = config
        self.norm_stats = norm_stats
        self.meta = dict(meta or {})
        self.text_tokenizer_file = Path(text_tokenizer_file)
        from tokenizers import Tokenizer

        text_tokenizer = Tokenizer.from_file(str(self.text_tokenizer_file))
        self.bos_id, self.pad_id = special_ids(text_tokenizer)

        if llama is None:
            if "llama" in self.meta:
                llama_cfg = LlamaConfig.from_dict(self.meta["llama"])
                llama_cfg._attn_implementation = config.backbone.attn_implementation
            else:
                llama_cfg = llama_config(config.backbone, text_tokenizer.get_vocab_size() + config.n_bins)
            llama = LlamaForCausalLM(llama_cfg)
        else:
            # A pretrained backbone: the action tokens go after its text vocabulary (see the README's
            # departures: Llama 3 has too few reserved tokens to hold 256 bins).
            vocab = self.meta["llama"]["vocab_size"] if "llama" in self.meta else llama.config.vocab_size + config.n_bins
            if llama.config.vocab_size != vocab:
                llama.resize_token_embeddings(vocab, mean_resizing=False)
        self.meta["llama"] = {k: v for k, v in llama.config.to_dict().items() if k != "quantization_config"}
        self.vocab_size = llama.config.vocab_size
        hidden = llama.config.hidden_size

        self.action_tokenizer = ActionTokenizer(norm_stats["action"], self.vocab_size, config.n_bins)
        if self.action_tokenizer.dim != config.action_dim:
            raise CheckpointError(
                f"norm_stats has {self.action_tokenizer.dim} action dimensions, the model config {config.action_dim}"
            )
        towers = len(config.image_keys) if config.vision_per_camera else 1
        self.vision = VisionTower(config.vision, config.second_vision, config.projector, hidden,
                                  film_dim=hidden if config.film else 0, architectures=self.meta.get("vision"),
                                  towers=towers)
        self.meta["vision"] = self.vision.architectures  # rebuilds the same ViTs when a checkpoint loads
        self.film_norm = FilmInputNorm(hidden) if config.film else None
        # One ViT reads every camera (OpenVLA-OFT's choice), or one ViT per camera (vision_per_camera); a
        # learned embedding per camera tells the backbone which view a token comes from.
        self.camera_embeddings = (nn.Parameter(torch.zeros(len(config.image_keys), hidden))
                                  if len(config.image_keys) > 1 else None)
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
        # Marks the action positions whose token is given (a committed prefix); see ModelConfig.prefix_actions.
        self.prefix_embedding = nn.Parameter(torch.zeros(hidden)) if config.prefix_actions else None
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
        meta = dict(meta or {})
        backbone = config.backbone
        if backbone.pretrained:
            llama = load_pretrained_llama(backbone.pretrained, backbone.attn_implementation, backbone.quantization)
        if backbone.quantization != "none":
            from vla.model.quantization import base_fingerprint

            meta["base"] = base_fingerprint(backbone.pretrained)
        return cls(config, text_tokenizer_file, norm_stats, llama=llama, meta=meta)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> VLA:
        """Load a checkpoint directory written by `save_pretrained` (see vla/model/checkpoint.py)."""
        from vla.model.checkpoint import load_checkpoint

        return load_checkpoint(cls, path, device)

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the checkpoint directory atomically; `state_dict` replaces this module's own weights
        (a sharded model's, gathered)."""
        from vla.model.checkpoint import save_checkpoint

        return save_checkpoint(self, path, state_dict)

    def merge_lora(self) -> VLA:
        """Fold LoRA adapters into the base weights (for export); the model then saves without peft. A 4-bit
        base (QLoRA) is dequantized first: the float weights are the NF4 ones the adapters trained on."""
        if self.config.backbone.quantization != "none":
            from vla.model.quantization import dequantize_and_merge

            self.llama = dequantize_and_merge(self.llama)
            self.config.backbone.quantization = "none"
            self.config.lora.rank = 0
        elif self.config.lora.rank > 0:
            self.llama = self.llama.merge_and_unload()
            self.config.lora.rank = 0
        return self

    # ------------------------------------------------------------------ pieces
    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def image_keys(self) -> list[str]:
        return list(self.config.image_keys)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens of all cameras together."""
        return self.vision.num_tokens * len(self.config.image_keys)

    def _llama_base(self) -> LlamaForCausalLM:
        return self.llama.get_base_model() if hasattr(self.llama, "get_base_model") else self.llama

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self._llama_base().get_input_embeddings()(ids)

    def action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] -> logits over the action bins only [..., n_bins]."""
        return self._llama_base().get_output_embeddings()(hidden)[..., -self.config.n_bins :]

    def _check(self, batch: Batch) -> None:
        size, keys = self.image_size, self.image_keys
        if not isinstance(batch.images, dict) or sorted(batch.images) != sorted(keys):
            got = sorted(batch.images) if isinstance(batch.images, dict) else type(batch.images).__name__
            raise ValueError(f"images must be a dict with the cameras {keys}, got {got}")
        b = batch.prompt_ids.shape[0]
        for key, images in batch.images.items():
            if images.dtype != torch.uint8 or tuple(images.shape) != (b, size, size, 3):
                raise ValueError(f"images[{key!r}] must be uint8 [B={b}, {size}, {size}, 3], "
                                 f"got {images.dtype} {list(images.shape)}")
        if batch.prompt_ids.shape != batch.prompt_mask.shape:
            raise ValueError(f"prompt_ids and prompt_mask must both be [B={b}, L], got {list(batch.prompt_ids.shape)} "
                             f"and {list(batch.prompt_mask.shape)}")
        if self.config.state_dim:
            if batch.state is None or tuple(batch.state.shape) != (b, self.config.state_dim):
                got = None if batch.state is None else list(batch.state.shape)
                raise ValueError(f"state must be [B={b}, {self.config.state_dim}], got {got}")
        if batch.prefix_ids is not None:
            if not self.config.prefix_actions:
                raise ValueError("this model was not trained with an action prefix (model.prefix_actions is 0)")
            if tuple(batch.prefix_ids.shape) != (b, self.config.action_tokens):
                raise ValueError(f"prefix_ids must be [B={b}, {self.config.action_tokens}], "
                                 f"got {list(batch.prefix_ids.shape)}")

    def encode_images(self, batch: Batch) -> torch.Tensor:
        """Projected image tokens of every camera, [B, C*N, H], conditioned on the instruction when
        FiLM is on. Cameras that share the ViT run as one batch of B*C images."""
        film = None
        if self.config.film:
            prompt = self.embed_tokens(batch.prompt_ids)
            weights = batch.prompt_mask.unsqueeze(-1).to(prompt.dtype)
            pooled = (prompt * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            film = self.film_norm(pooled)
        cameras = len(self.image_keys)
        if self.config.vision_per_camera and cameras > 1:
            tokens = torch.stack([self.vision(batch.images[key], film, tower=i)
                                  for i, key in enumerate(self.image_keys)])  # [C, B, N, H]
        else:
            images = torch.cat([batch.images[key] for key in self.image_keys])  # [C*B, H, W, 3], camera-major
            if film is not None and cameras > 1:
                film = film.repeat(cameras, 1)
            tokens = self.vision(images, film)  # [C*B, N, H]
            if cameras == 1:
                return tokens
            tokens = tokens.unflatten(0, (cameras, -1))  # [C, B, N, H]; no Python int of B: the export keeps B dynamic
        tokens = tokens + self.camera_embeddings.to(tokens.dtype)[:, None, None]
        return tokens.transpose(0, 1).flatten(1, 2)

    def embed_prefix(self, batch: Batch, image_tokens: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> prefix embeddings [B, P, H], prefix validity [B, P] (bool), image memory [B, N, H] or None."""
        b = batch.prompt_ids.shape[0]
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
                **{_CACHE_ARGUMENT: cache},
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
        if batch.prefix_ids is not None:  # a given token is not predicted
            labels = torch.where(batch.prefix_ids >= 0, IGNORE_INDEX, labels)
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
            if batch.prefix_ids is not None:
                given = (batch.prefix_ids >= 0).unsqueeze(-1).to(embeds.dtype)
                tokens = self.embed_tokens(batch.prefix_ids.clamp(min=0)) + self.prefix_embedding.to(embeds.dtype)
                tail = tail + given * tokens
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
            return self.keep_prefix(batch, self.action_logits_for(batch).argmax(-1) + offset)
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

    @staticmethod
    def keep_prefix(batch: Batch, ids: torch.Tensor) -> torch.Tensor:
        """Action ids [B, K*D] with the given (committed) prefix tokens in place of the predicted ones."""
        if batch.prefix_ids is None:
            return ids
        return torch.where(batch.prefix_ids >= 0, batch.prefix_ids, ids)

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

    # ------------------------------------------------------------------ convenience
    def prepare(self, observations: list[dict]) -> Batch:
        """Raw observations (a uint8 HxWx3 image per camera, of any size; prompt str; state) -> a batch on
        the model's device, through the preprocessing every policy uses (`ObservationEncoder`)."""
        if getattr(self, "_encoder", None) is None:
            from vla.model.checkpoint import observation_encoder

            self._encoder = observation_encoder(self)
        return Batch.from_feeds(self._encoder(observations), self.image_keys, next(self.parameters()).device)

    @torch.no_grad()
    def predict_action(self, observations: dict | list[dict]) -> np.ndarray:
        """Observation dict(s) -> actions [K, D] (or [B, K, D] for a list), un-normalized."""
        single = isinstance(observations, dict)
        batch = self.prepare([observations] if single else observations)
        ids = self.predict_action_ids(batch).cpu().numpy()
        actions = self.action_tokenizer.decode(ids.reshape(len(ids), self.config.chunk_size, self.config.action_dim))
        return actions[0] if single else actions
