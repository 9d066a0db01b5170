"""Vision: timm ViTs returning multi-layer patch features, optional FiLM, and the projector."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from vla.errors import CheckpointError
from vla.model.config import VisionConfig


def create_vit(config: VisionConfig) -> nn.Module:
    """A timm VisionTransformer, randomly initialised or with weights from a file, local dir or hub id."""
    overrides = {
        key: value
        for key, value in (
            ("patch_size", config.patch_size),
            ("embed_dim", config.width),
            ("depth", config.depth),
            ("num_heads", config.heads),
        )
        if value is not None
    }
    kwargs = dict(num_classes=0, global_pool="", img_size=config.image_size, **overrides)
    source = config.pretrained
    if source is None:
        model = timm.create_model(config.name, pretrained=False, **kwargs)
    elif source.startswith(("hf-hub:", "local-dir:")):
        model = timm.create_model(source, pretrained=True, **kwargs)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"vision weights {path}: no such file")
        model = timm.create_model(config.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise CheckpointError(f"{config.name}: not a ViT (needs .patch_embed and .blocks)")
    if source is None and getattr(model, "pos_embed", None) is not None:
        sincos_position_embedding(model)
    return model


def sincos_position_embedding(vit: nn.Module) -> None:
    """Start a from-scratch ViT's learned position embedding at a 2D sine-cosine table (as MAE does).

    timm initialises it at std 0.02, some 15x below the patch features, so where a patch sits is
    barely visible at first; a policy has to find where the objects are before it can act on them.
    """
    grid_h, grid_w = vit.patch_embed.grid_size
    dim = vit.pos_embed.shape[-1]
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32),
                            indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=1)
    table = torch.nn.functional.pad(table, (0, dim - table.shape[1]))
    prefix = vit.pos_embed.shape[1] - table.shape[0]  # class/register tokens with their own embedding
    with torch.no_grad():
        vit.pos_embed[0, prefix:] = table
        vit.pos_embed[0, :prefix] = 0.0


class VisionEncoder(nn.Module):
    """Patch features from several ViT blocks, concatenated channel-wise.

    forward(images uint8 [B, H, W, 3], film [B, F] | None) -> [B, N, len(feature_layers) * width]
    """

    def __init__(self, config: VisionConfig, film_dim: int = 0):
        super().__init__()
        self.vit = create_vit(config)
        depth = len(self.vit.blocks)
        self.layers = sorted({i % depth for i in config.feature_layers})
        if any(not -depth <= i < depth for i in config.feature_layers):
            raise ValueError(f"feature_layers {config.feature_layers} out of range for a {depth}-block ViT")
        # Blocks past the last feature layer and the final norm never reach the loss; drop them, or
        # DDP stops on parameters without gradients (and they would be exported for nothing).
        self.vit.blocks = self.vit.blocks[: self.layers[-1] + 1]
        self.vit.norm = nn.Identity()
        self.width = self.vit.embed_dim
        self.out_dim = self.width * len(self.layers)
        self.num_patches = self.vit.patch_embed.num_patches
        self.num_prefix = self.vit.num_prefix_tokens
        pretrained_cfg = self.vit.pretrained_cfg
        mean = config.mean or list(pretrained_cfg.get("mean", (0.5, 0.5, 0.5)))
        std = config.std or list(pretrained_cfg.get("std", (0.5, 0.5, 0.5)))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.film = None
        if film_dim:
            # FiLM (OpenVLA-OFT+): the instruction's pooled embedding gives a scale and a shift of the
            # features, on the patch embeddings and after every block. Conditioning the patch embeddings
            # (which are linear in the pixels) lets the instruction pick out a colour before any block
            # has mixed the patches. Zero-initialised, so training starts from the plain ViT.
            self.film = nn.ModuleList(nn.Linear(film_dim, 2 * self.width) for _ in range(self.layers[-1] + 2))
            # And on the pixels: an instruction-dependent colour transform (3x3 matrix and offset), so
            # "the red cube" can map red onto one canonical colour before the patches are embedded.
            self.pixel_film = nn.Linear(film_dim, 12)
            for layer in [*self.film, self.pixel_film]:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        """images: uint8 [B, H, W, 3]."""
        x = (images.permute(0, 3, 1, 2).to(self.mean.dtype) - self.mean) / self.std
        if self.film is not None:
            mix, offset = self.pixel_film(film).split([9, 3], dim=-1)
            x = x + torch.einsum("bij,bjhw->bihw", mix.view(-1, 3, 3), x) + offset[:, :, None, None]
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        x = self._modulate(x, film, 0)
        features = []
        for i, block in enumerate(vit.blocks):
            x = self._modulate(block(x), film, i + 1)
            if i in self.layers:
                features.append(x[:, self.num_prefix :])
        return torch.cat(features, dim=-1)

    def _modulate(self, x: torch.Tensor, film: torch.Tensor | None, index: int) -> torch.Tensor:
        if self.film is None:
            return x
        scale, shift = self.film[index](film).unsqueeze(1).chunk(2, dim=-1)
        return x * (1.0 + scale) + shift


class VisionTower(nn.Module):
    """One or two encoders fused channel-wise, then the projector into the backbone's width.

    forward(images uint8 [B, H, W, 3], film [B, F] | None) -> [B, N, hidden]
    """

    def __init__(self, primary: VisionConfig, secondary: VisionConfig | None, projector: str, hidden: int, film_dim: int):
        super().__init__()
        self.encoders = nn.ModuleList([VisionEncoder(primary, film_dim)])
        if secondary is not None:
            second = VisionEncoder(secondary, film_dim)
            if second.num_patches != self.encoders[0].num_patches:
                raise ValueError(
                    f"the two vision encoders give {self.encoders[0].num_patches} and {second.num_patches} "
                    "patches; channel-wise fusion needs the same grid"
                )
            self.encoders.append(second)
        self.num_tokens = self.encoders[0].num_patches
        self.projector = build_projector(projector, sum(e.out_dim for e in self.encoders), hidden)

    def forward(self, images: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        features = torch.cat([encoder(images, film) for encoder in self.encoders], dim=-1)
        return self.projector(features)


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """`linear` (LLaMA 3.2 Vision) or `mlp` (OpenVLA's GELU MLP); a LayerNorm first evens out the
    scales of features taken from different blocks."""
    if kind == "linear":
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
    hidden = max(in_dim, out_dim)
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
