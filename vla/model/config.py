"""Model configuration. Presets live in configs/model/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.config import find_config, from_dict, load_yaml, merge
from vla.errors import ConfigError
from vla.model.quantization import QUANTIZATIONS
from vla.model.text import TEXT_TOKENIZERS

PROJECTORS = ("linear", "mlp")
FUSIONS = ("prefix", "cross_attention")
DECODINGS = ("parallel", "autoregressive")
AUX_LOSSES = ("none", "actions", "target")


@dataclass
class VisionConfig:
    """A timm ViT. `pretrained` is None (random init), a weights file, `local-dir:/path` or `hf-hub:org/name`."""

    name: str = "vit_tiny_patch16_224"
    image_size: int = 64
    pretrained: str | None = None
    # Architecture overrides for from-scratch encoders (ignored keys stay at the timm model's defaults).
    patch_size: int | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    # LLaMA 3.2 Vision concatenates patch features from several blocks; OpenVLA uses [-2].
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    # Pixel normalization; None takes the timm model's pretrained config.
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class BackboneConfig:
    """A Llama. With `pretrained` (hub id or local directory) the sizes below are read from it instead."""

    pretrained: str | None = None
    hidden_size: int = 128
    intermediate_size: int = 512
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    attn_implementation: str = "sdpa"
    tie_embeddings: bool = False  # share the input embedding with the output head (as Llama 3.2 does)
    # "nf4": load the pretrained backbone in 4-bit NF4 and train LoRA adapters on it (QLoRA); needs
    # `pretrained` and lora.rank > 0. See vla/model/quantization.py.
    quantization: str = "none"


@dataclass
class LoraConfig:
    rank: int = 0  # 0 = no LoRA, train the backbone fully
    alpha: int = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    # Camera keys the model reads, in order (HDF5 obs/<key>, LeRobot observation.images.<key>, the
    # robot's observation); None: every camera in the training data.
    image_keys: list[str] | None = None
    # True: each camera its own ViT (same architecture and initial weights), the projector shared; False: one
    # ViT reads every camera (OpenVLA-OFT's choice). From scratch a shared ViT learned nothing from two views
    # (README, "Levers, one at a time"); the pretrained preset shares its SigLIP. No effect with one camera.
    vision_per_camera: bool = True
    vision: VisionConfig = field(default_factory=VisionConfig)
    second_vision: VisionConfig | None = None  # fused channel-wise (OpenVLA's DINOv2 + SigLIP)
    film: bool = False  # instruction-conditioned vision (OpenVLA-OFT+)
    projector: str = "mlp"
    fusion: str = "prefix"
    cross_attention_every: int = 2  # with fusion=cross_attention: a gated block before every k-th layer
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    decoding: str = "parallel"
    chunk_size: int = 1  # K future actions predicted per decision
    # Parallel decoding: up to this many leading actions of a chunk may be given as a committed prefix
    # (what a pipelined control loop still executes while the chunk is inferred), and the rest is
    # predicted consistent with them. Trained by conditioning each sample on 0..prefix_actions of its
    # own leading actions (training-time action conditioning for real-time chunking, Black et al. 2025).
    prefix_actions: int = 0
    action_dim: int | None = None  # D; None: from the data (its normalization statistics)
    state_dim: int | None = None  # S; None: from the data; 0: no proprioceptive token
    n_bins: int = 256
    max_prompt_tokens: int = 32
    # From-scratch backbones: "bpe" (byte-level, text_vocab_size pieces) or "words" (one token per
    # word of the instructions, any other word <unk>); vla/model/text.py.
    text_tokenizer: str = "bpe"
    text_vocab_size: int = 512
    # A training-only head on the image tokens: "actions" predicts the chunk, "target" the named object's
    # position (privileged, recorded by `vla collect`); it gives the vision tower a direct signal.
    aux_loss: str = "none"
    aux_weight: float = 1.0

    def __post_init__(self):
        for name, value, valid in (
            ("projector", self.projector, PROJECTORS),
            ("fusion", self.fusion, FUSIONS),
            ("decoding", self.decoding, DECODINGS),
            ("aux_loss", self.aux_loss, AUX_LOSSES),
            ("text_tokenizer", self.text_tokenizer, TEXT_TOKENIZERS),
        ):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        if self.image_keys is not None and (not self.image_keys or len(set(self.image_keys)) != len(self.image_keys)):
            raise ValueError(f"image_keys must name distinct cameras, got {self.image_keys}")
        if self.chunk_size < 1 or (self.action_dim is not None and self.action_dim < 1) or self.n_bins < 2:
            raise ValueError("chunk_size and action_dim must be >= 1 and n_bins >= 2")
        if self.backbone.quantization not in QUANTIZATIONS:
            raise ValueError(f"backbone.quantization must be one of {', '.join(QUANTIZATIONS)}, "
                             f"got {self.backbone.quantization!r}")
        if self.backbone.quantization != "none" and (not self.backbone.pretrained or self.lora.rank <= 0):
            raise ValueError("backbone.quantization (QLoRA) needs backbone.pretrained and lora.rank > 0: the 4-bit "
                             "base stays frozen and only adapters train")
        if not 0 <= self.prefix_actions < self.chunk_size:
            raise ValueError(f"prefix_actions must be in [0, chunk_size - 1 = {self.chunk_size - 1}], got {self.prefix_actions}")
        if self.prefix_actions and self.decoding != "parallel":
            raise ValueError("prefix_actions (a committed action prefix) needs parallel decoding")
        if self.state_dim is not None and self.state_dim < 0:
            raise ValueError(f"state_dim must be >= 0, got {self.state_dim}")

    @property
    def action_tokens(self) -> int:
        """Tokens per decision: K actions x D dimensions."""
        return self.chunk_size * self.action_dim


def load_model_config(name_or_path: str, overrides: dict | None = None) -> ModelConfig:
    """A preset by name (`tiny`, `small`, `llama-3.2-1b`) or a YAML path, with a dict of overrides."""
    data = load_yaml(find_config(name_or_path, "model"))
    data = merge(data, overrides or {})
    config = from_dict(ModelConfig, data, "model.")
    if not isinstance(config, ModelConfig):
        raise ConfigError(f"{name_or_path}: not a model config")
    return config

