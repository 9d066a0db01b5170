"""Small pretrained checkpoints in the published layouts, written by the libraries' own writers.

No weights can be downloaded here, so the pretrained path is proven on these:

- `llama32_dir(path)`: a Llama 3.2-style directory. Weights and generation config come from
  transformers' `save_pretrained` (tied embedding and output head: one tensor in model.safetensors);
  config.json carries exactly the published Llama-3.2-1B keys and values except the sizes
  (transformers 5 would write `rope_parameters` where the published file, which users download, has
  `rope_scaling` and `rope_theta`); the tokenizer is a byte-level BPE with Llama 3's pre-tokenizer
  pattern, its `<|begin_of_text|>` post-processor and its 256 special tokens in their published order
  after the text vocabulary, saved by `PreTrainedTokenizerFast.save_pretrained`.
- `siglip_dir(path)`: a SigLIP ViT (timm's `vit_base_patch16_siglip_224` at a small width) in the
  layout timm's `local-dir:` and `hf-hub:` loaders read (config.json + model.safetensors), written by
  timm's own `save_for_hf`.
"""

from __future__ import annotations

import json
from pathlib import Path

# meta-llama/Llama-3.2-1B config.json as published.
LLAMA_32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
SMALL_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16}

# Llama 3's pre-tokenizer split (tokenizer.json of Llama 3 / 3.2).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
NAMED_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>",
                  6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                  10: "<|python_tag|>"}

CORPUS = [
    "In: What action should the robot take to {}?\nOut:",
    "reach the red cube", "move to the green cube", "go to the blue block", "hover over the red block",
    "push the red block to the white circle", "pick up the green block", "lift the blue cube",
    "put the red block in the white circle", "place the green cube on the white zone",
    "the quick brown fox jumps over the lazy dog", "a robot arm picks objects from a table and places them",
    "please open the drawer and close the window", "turn the handle, press the button, slide the door",
]


def llama3_special_tokens() -> list[str]:
    """The 256 special tokens of Llama 3, in id order (128000 ... 128255 in the published vocabulary)."""
    names, reserved = [], 0
    for offset in range(256):
        if offset in NAMED_SPECIALS:
            names.append(NAMED_SPECIALS[offset])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return names


def llama3_tokenizer(text_vocab: int = 1000):
    """A `tokenizers.Tokenizer` built the way Llama 3's is: BPE over bytes, its split pattern, BOS added
    by the post-processor, 256 special tokens after the text vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=text_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    specials = llama3_special_tokens()
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    return tokenizer


def llama32_dir(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    tokenizer = llama3_tokenizer()
    vocab = tokenizer.get_vocab_size()
    bos, eos = tokenizer.token_to_id("<|begin_of_text|>"), tokenizer.token_to_id("<|end_of_text|>")
    config = {**LLAMA_32_1B_CONFIG, **SMALL_SIZES, "vocab_size": vocab, "bos_token_id": bos, "eos_token_id": eos}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.save_pretrained(path)
    (path / "config.json").write_text(json.dumps(config, indent=2))  # the published key set (see above)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(path)
    return path


SIGLIP_ARCH = "vit_base_patch16_siglip_224"
SIGLIP_SMALL = {"embed_dim": 32, "depth": 8, "num_heads": 2}


def siglip_dir(path: Path, seed: int = 0) -> Path:
    import timm
    import torch
    from timm.models import _hub

    torch.manual_seed(seed)
    model = timm.create_model(SIGLIP_ARCH, pretrained=False, **SIGLIP_SMALL)
    _hub.save_for_hf(model, str(path), model_args=dict(SIGLIP_SMALL), safe_serialization=True)
    return Path(path)
