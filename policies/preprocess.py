"""Observation preprocessing shared by training and deployment, so both see the same inputs.

Images are resized here (OpenCV, area interpolation when shrinking) and stay uint8; pixel
normalization happens inside the model and the exported graph. Prompts are tokenized with
`tokenizers`; states are normalized with the dataset's q01/q99.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


def check_image(image: np.ndarray, key: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"observation[{key!r}] must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    return image


def resize_image(image: np.ndarray, size: int, key: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]."""
    image = check_image(image, key)
    if image.shape[:2] == (size, size):
        return image
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def normalize_state(state: np.ndarray, stats: dict) -> np.ndarray:
    """State [..., S] to roughly [-1, 1] with q01/q99; constant dimensions become 0."""
    state = np.asarray(state, dtype=np.float32)
    expected = len(stats["q01"])
    if state.shape[-1] != expected:
        raise ValueError(f"observation['state'] must have {expected} values, got shape {list(state.shape)}")
    if not np.all(np.isfinite(state)):
        raise ValueError("observation['state'] contains NaN or inf")
    low, high = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    span = high - low
    constant = span < 1e-8
    norm = 2.0 * (state - low) / np.where(constant, 1.0, span) - 1.0
    return np.where(constant, 0.0, np.clip(norm, -5.0, 5.0)).astype(np.float32)


class PromptTokenizer:
    """Wraps a `tokenizers` tokenizer: instruction -> fixed-length ids and mask, BOS excluded.

    Prompts are left-padded to `max_tokens`, so the prompt's last token ("Out:") sits right before
    the actions; the model skips pads with the mask, and position ids follow the mask, so padding
    never changes the actions.
    """

    def __init__(self, tokenizer_file: str | Path, max_tokens: int, pad_id: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.max_tokens = max_tokens
        self.pad_id = pad_id

    def prompt(self, instruction: str) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("the instruction (observation['prompt']) must be a non-empty string")
        return PROMPT_TEMPLATE.format(instruction=instruction.strip().rstrip("?.!").lower())

    def token_ids(self, instruction: str) -> list[int]:
        return self.tokenizer.encode(self.prompt(instruction), add_special_tokens=False).ids

    def __call__(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids int64 [max_tokens], mask int64 [max_tokens])."""
        ids = self.token_ids(instruction)
        if len(ids) > self.max_tokens:
            raise ValueError(
                f"the prompt for {instruction!r} is {len(ids)} tokens; the model takes at most {self.max_tokens}"
            )
        padded = np.full(self.max_tokens, self.pad_id, np.int64)
        mask = np.zeros(self.max_tokens, np.int64)
        if ids:
            padded[-len(ids) :] = ids
            mask[-len(ids) :] = 1
        return padded, mask


def trim_prompt_padding(ids, mask):
    """Drop the leading columns that are padding in every row: ids, mask [B, L] -> [B, L'].

    Prompts are left-padded and the model skips pads, so the actions do not change; the sequence
    (and the compute of every layer) gets shorter. Works on numpy arrays and CPU torch tensors.
    """
    used = np.asarray(mask).any(axis=0)
    start = int(used.argmax()) if used.any() else used.shape[0] - 1
    return ids[:, start:], mask[:, start:]
