"""Text tokenizers: a small byte-level BPE trained on the instructions (from-scratch backbones),
or the pretrained backbone's own `tokenizer.json`."""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from policies.preprocess import PROMPT_TEMPLATE
from vla.errors import CheckpointError

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
TOKENIZER_FILE = "tokenizer.json"


def train_bpe(instructions: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE over the prompts, so any instruction encodes (unknown words fall back to bytes)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    prompts = [PROMPT_TEMPLATE.format(instruction=i.strip().rstrip("?.!").lower()) for i in instructions]
    tokenizer.train_from_iterator(prompts, trainer=trainer)
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """(bos, pad) ids: ours, or Llama 3's <|begin_of_text|> and a reserved token."""
    for bos_name, pad_name in (("<bos>", "<pad>"), ("<|begin_of_text|>", "<|finetune_right_pad_id|>"), ("<s>", "<unk>")):
        bos, pad = tokenizer.token_to_id(bos_name), tokenizer.token_to_id(pad_name)
        if bos is not None:
            return bos, pad if pad is not None else bos
    raise CheckpointError("the text tokenizer has no beginning-of-sequence token")


def copy_pretrained_tokenizer(source_dir: str | Path, out_dir: str | Path) -> Path:
    src = Path(source_dir) / TOKENIZER_FILE
    if not src.exists():
        raise CheckpointError(f"{source_dir}: no {TOKENIZER_FILE} (a fast tokenizer is needed)")
    dst = Path(out_dir) / TOKENIZER_FILE
    shutil.copyfile(src, dst)
    return dst
