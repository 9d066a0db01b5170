"""Text tokenizers for from-scratch backbones, learned from the instructions (a small byte-level BPE, or
one token per word with every unseen word as `<unk>`), or the pretrained backbone's own `tokenizer.json`."""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from policies.preprocess import PROMPT_TEMPLATE
from vla.errors import CheckpointError

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
TOKENIZER_FILE = "tokenizer.json"
TEXT_TOKENIZERS = ("bpe", "words")


def train_text_tokenizer(kind: str, instructions: list[str], vocab_size: int) -> Tokenizer:
    """The tokenizer a from-scratch backbone reads its instructions with; `kind` is one of TEXT_TOKENIZERS."""
    if kind == "words":
        return train_words(instructions)
    return train_bpe(instructions, vocab_size)


def _prompts(instructions: list[str]) -> list[str]:
    return [PROMPT_TEMPLATE.format(instruction=i.strip().rstrip("?.!").lower()) for i in instructions]


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
    tokenizer.train_from_iterator(_prompts(instructions), trainer=trainer)
    return tokenizer


def train_words(instructions: list[str]) -> Tokenizer:
    """One token per word of the prompts; any other word is the one `<unk>` token.

    A word the instructions never used then reads as "a word I do not know" rather than as byte pieces
    the model never saw together; trained with `data.instruction_noise` (random strings, so `<unk>`),
    the policy learns to act on the words it knows around it.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(_prompts(instructions), trainer=trainer)
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
