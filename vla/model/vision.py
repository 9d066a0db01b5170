"""Vision: timm ViTs returning multi-layer patch features, optional FiLM, and the projector."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torch.nn as nn

from vla.errors import CheckpointError
from vla.model.config import VisionConfig


def create_vit(config: VisionConfig, architecture: dict | None = None) -> tuple[nn.Module, dict]:
    """-> (a timm VisionTransformer, its architecture). `architecture` ({"name", "args"}, as returned
    before and saved in a checkpoint's meta) rebuilds the same network without reading any weights;
    otherwise the ViT is randomly initialised, or takes pretrained weights from

    - `timm`: timm's own published weights for `name` (an architecture with its tag, e.g.
      `vit_base_patch16_siglip_224.webli`), from the local Hugging Face cache or the hub;
    - `local-dir:/path`: a directory in timm's hub layout (config.json and model.safetensors or
      pytorch_model.bin, as `timm.models.push_to_hf_hub` / `save_for_hf` write it);
    - `hf-hub:org/name`: such a repository on the hub (or in the local cache);
    - a path to a weights file for the architecture `name`.
    """
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
    fixed = dict(num_classes=0, global_pool="", img_size=config.image_size)
    source = config.pretrained
    if architecture is not None:
        model = timm.create_model(architecture["name"], pretrained=False, **fixed, **architecture["args"])
    elif source is None:
        model = timm.create_model(config.name, pretrained=False, **fixed, **overrides)
        architecture = {"name": config.name, "args": overrides}
    else:
        model, architecture = _pretrained_vit(config.name, source, {**fixed, **overrides})
        architecture["args"] = {**architecture["args"], **overrides}
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise CheckpointError(f"{config.name}: not a ViT (needs .patch_embed and .blocks)")
    architecture.setdefault("mean", list(model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))))
    architecture.setdefault("std", list(model.pretrained_cfg.get("std", (0.5, 0.5, 0.5))))
    if source is None and getattr(model, "pos_embed", None) is not None:
        sincos_position_embedding(model)
    return model, architecture


def _pretrained_vit(name: str, source: str, kwargs: dict) -> tuple[nn.Module, dict]:
    """-> (the ViT with its weights, {"name": architecture, "args": the model_args it was built with})."""
    where = f"vision.pretrained={source!r}"
    if source == "timm":
        if name not in timm.list_pretrained(name):
            tags = timm.list_pretrained(name.split(".")[0] + ".*")
            raise CheckpointError(f"{where}: timm publishes no weights named {name!r}; set vision.name to one of "
                                  f"{tags[:8] or 'timm.list_pretrained()'}")
        model = _timm_load(name, where, kwargs, hint="the weights are neither in the local Hugging Face cache nor "
                           "reachable on the hub; download them once, or point vision.pretrained at local-dir:/path")
        return model, {"name": name, "args": {}}
    if source.startswith("local-dir:"):
        path = Path(source.removeprefix("local-dir:"))
        if not path.is_dir():
            raise CheckpointError(f"{where}: no such directory")
        if not (path / "config.json").exists():
            raise CheckpointError(f"{where}: no config.json; timm's local-dir layout is config.json (architecture, "
                                  "pretrained_cfg, model_args) beside model.safetensors")
        if not any((path / f).exists() for f in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")):
            raise CheckpointError(f"{where}: no model.safetensors or pytorch_model.bin")
        hub_config = json.loads((path / "config.json").read_text())
        model = _timm_load(source, where, kwargs)
        return model, {"name": hub_config.get("architecture", name), "args": _model_args(hub_config)}
    if source.startswith("hf-hub:"):
        model = _timm_load(source, where, kwargs, hint="timm reads a repository with config.json and model.safetensors "
                           "(timm's own, such as hf-hub:timm/vit_base_patch16_siglip_224.webli; OpenCLIP repositories "
                           "such as timm/ViT-B-16-SigLIP have no config.json for it)")
        from timm.models._hub import load_model_config_from_hf

        _, arch, model_args = load_model_config_from_hf(source.removeprefix("hf-hub:"))
        return model, {"name": arch, "args": _model_args({"model_args": model_args or {}})}
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file (vision.pretrained takes timm, local-dir:/path, hf-hub:org/name "
                              "or a weights file)")
    return _timm_load(name, where, {**kwargs, "pretrained_cfg_overlay": {"file": str(path)}}), {"name": name, "args": {}}


def _model_args(hub_config: dict) -> dict:
    """The architecture arguments of a timm hub config.json, less the ones the encoder sets itself."""
    args = dict(hub_config.get("model_args") or {})
    for key in ("num_classes", "global_pool", "img_size", "pretrained_cfg"):
        args.pop(key, None)
    return args


def _timm_load(name: str, where: str, kwargs: dict, hint: str = "") -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{where}: cannot load ({message}){'; ' + hint if hint else ''}") from None


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

    def __init__(self, config: VisionConfig, film_dim: int = 0, architecture: dict | None = None):
        super().__init__()
        self.vit, self.architecture = create_vit(config, architecture)
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
        mean = config.mean or self.architecture["mean"]
        std = config.std or self.architecture["std"]
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
    """One or two encoders fused channel-wise, then the projector into the backbone's width; with
    `towers` > 1, that many sets of encoders (one per camera), the projector shared.

    forward(images uint8 [B, H, W, 3], film [B, F] | None, tower int) -> [B, N, hidden]
    """

    def __init__(self, primary: VisionConfig, secondary: VisionConfig | None, projector: str, hidden: int, film_dim: int,
                 architectures: list[dict] | None = None, towers: int = 1):
        """`architectures`: each encoder's, from a checkpoint's meta (`self.architectures` of the tower saved)."""
        super().__init__()
        architectures = list(architectures or [None, None])
        kinds = [primary] + ([secondary] if secondary is not None else [])
        # encoders[t * len(kinds) + k]: camera t's encoder of kind k (parameter names vision.encoders.<i>.*)
        self.encoders = nn.ModuleList(
            VisionEncoder(kind, film_dim, architectures[k] if k < len(architectures) else None)
            for _ in range(towers) for k, kind in enumerate(kinds))
        if len(kinds) == 2 and self.encoders[1].num_patches != self.encoders[0].num_patches:
            raise ValueError(
                f"the two vision encoders give {self.encoders[0].num_patches} and {self.encoders[1].num_patches} "
                "patches; channel-wise fusion needs the same grid"
            )
        self.kinds = len(kinds)
        self.num_tokens = self.encoders[0].num_patches
        self.architectures = [encoder.architecture for encoder in self.encoders[: self.kinds]]
        self.projector = build_projector(projector, sum(e.out_dim for e in self.encoders[: self.kinds]), hidden)

    def forward(self, images: torch.Tensor, film: torch.Tensor | None = None, tower: int = 0) -> torch.Tensor:
        encoders = self.encoders[tower * self.kinds : (tower + 1) * self.kinds]
        features = torch.cat([encoder(images, film) for encoder in encoders], dim=-1)
        return self.projector(features)


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """`linear` (LLaMA 3.2 Vision) or `mlp` (OpenVLA's GELU MLP); a LayerNorm first evens out the
    scales of features taken from different blocks."""
    if kind == "linear":
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
    hidden = max(in_dim, out_dim)
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
