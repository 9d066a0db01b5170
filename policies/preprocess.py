"""Observation preprocessing shared by training and deployment, so both see the same inputs.

Images are resized here (OpenCV, area interpolation when shrinking) and stay uint8; pixel
normalization happens inside the model and the exported graph. Prompts are tokenized with
`tokenizers`, after the policy's lexicon, if it has one, has put them in its taught words; states are
normalized with the dataset's q01/q99.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from policies.lexicon import Lexicon

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
    never changes the actions. An instruction too long for `max_tokens` loses its last words (the
    template is never cut), with one warning per instruction.
    """

    def __init__(self, tokenizer_file: str | Path, max_tokens: int, pad_id: int, lexicon: Lexicon | None = None):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.lexicon = lexicon
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if len(self.token_ids("x")) > max_tokens:
            raise ValueError(f"max_prompt_tokens {max_tokens} leaves no room for an instruction in the prompt template")

    @staticmethod
    def clean(instruction: str) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("the instruction (observation['prompt']) must be a non-empty string")
        return " ".join(instruction.strip().rstrip("?.!").lower().split())

    def read(self, instruction: str) -> str:
        """The instruction as the policy reads it: cleaned, and in its taught words when it has a lexicon."""
        cleaned = self.clean(instruction)
        return cleaned if self.lexicon is None else self.lexicon.rewrite(cleaned)

    def prompt(self, instruction: str) -> str:
        return PROMPT_TEMPLATE.format(instruction=self.read(instruction))

    def token_ids(self, instruction: str) -> list[int]:
        return self.tokenizer.encode(self.prompt(instruction), add_special_tokens=False).ids

    def fitted_ids(self, instruction: str) -> list[int]:
        """The prompt's ids, the instruction cut at a word boundary until the prompt fits."""
        ids = self.token_ids(instruction)
        if len(ids) <= self.max_tokens:
            return ids
        words = self.read(instruction).split()
        low, high = 1, len(words) - 1  # the longest prefix of words that fits: binary search
        while low < high:
            middle = (low + high + 1) // 2
            if len(self.token_ids(" ".join(words[:middle]))) <= self.max_tokens:
                low = middle
            else:
                high = middle - 1
        kept = " ".join(words[:low])
        fitted = self.token_ids(kept)
        if len(fitted) > self.max_tokens:  # one word alone is too long: cut its tokens, keep the template's end
            suffix = self.tokenizer.encode(PROMPT_TEMPLATE.split("{instruction}")[1], add_special_tokens=False).ids
            fitted = fitted[: self.max_tokens - len(suffix)] + suffix
        warnings.warn(f"the prompt for {instruction!r} is {len(ids)} tokens, the policy takes {self.max_tokens}: "
                      f"the instruction was cut to {kept!r}", stacklevel=4)
        return fitted

    def __call__(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids int64 [max_tokens], mask int64 [max_tokens])."""
        cached = self._cache.get(instruction) if isinstance(instruction, str) else None
        if cached is not None:
            return cached
        ids = self.fitted_ids(instruction)
        padded = np.full(self.max_tokens, self.pad_id, np.int64)
        mask = np.zeros(self.max_tokens, np.int64)
        padded[-len(ids) :] = ids
        mask[-len(ids) :] = 1
        if len(self._cache) > 1024:  # instructions repeat every tick; a robot does not see thousands
            self._cache.clear()
        self._cache[instruction] = (padded, mask)
        return padded, mask


class ObservationEncoder:
    """Observations -> model inputs, the one path shared by training, the PyTorch policy and `OnnxPolicy`.

    __call__(observations: list of {camera key: uint8 [H, W, 3], "prompt": str, "state": float [S],
                                    optionally "action_prefix": float [d, D], d <= prefix_actions})
        -> {camera key: uint8 [B, s, s, 3] for each of `image_keys`, "prompt_ids": int64 [B, L],
            "prompt_mask": int64 [B, L], "state": float32 [B, S] (when the policy takes a state),
            "action_prefix": int64 [B, K*D] (when the policy takes one: the committed actions'
            tokens, -1 where none is given)}

    L is the longest prompt in the batch (columns that are padding in every row are dropped).
    """

    RESERVED = ("prompt", "prompt_ids", "prompt_mask", "state", "timestamp", "action_prefix")

    def __init__(self, image_keys: list[str], image_size: int, prompts: PromptTokenizer, state_stats: dict | None,
                 actions=None, chunk_size: int = 1, prefix_actions: int = 0):
        clash = [k for k in image_keys if k in self.RESERVED]
        if clash:
            raise ValueError(f"camera keys {clash} clash with the observation's own keys {list(self.RESERVED)}")
        self.image_keys = list(image_keys)
        self.image_size = image_size
        self.prompts = prompts
        self.state_stats = state_stats
        self.actions = actions  # policies.actions.ActionTokenizer, to encode committed prefixes
        self.chunk_size = chunk_size
        self.prefix_actions = prefix_actions
        self._warned_resize: set[str] = set()

    @classmethod
    def for_spec(cls, spec, tokenizer_file: str | Path) -> ObservationEncoder:
        """The encoder of a policy described by a `PolicySpec`."""
        from policies.actions import ActionTokenizer

        prompts = PromptTokenizer(tokenizer_file, spec.max_prompt_tokens, spec.pad_id, Lexicon.beside(tokenizer_file))
        actions = ActionTokenizer(spec.norm_stats["action"], spec.vocab_size, spec.n_bins)
        return cls(spec.image_keys, spec.image_size, prompts, spec.norm_stats["state"] if spec.state_dim else None,
                   actions, spec.chunk_size, spec.prefix_actions)

    def check_keys(self, observation: dict) -> None:
        missing = [k for k in self.image_keys if k not in observation]
        if missing:
            cameras = sorted(k for k, v in observation.items() if isinstance(v, np.ndarray) and v.ndim == 3)
            raise ValueError(f"the observation has cameras {cameras}, the policy takes {self.image_keys} "
                             f"(missing {missing})")
        if observation.get("prompt", observation.get("instruction")) is None:
            raise ValueError("observation is missing 'prompt' (the instruction)")
        if self.state_stats is not None and "state" not in observation:
            raise ValueError(f"observation is missing 'state' ({len(self.state_stats['q01'])} values)")

    def image(self, observation: dict, key: str) -> np.ndarray:
        image = check_image(observation[key], key)
        if image.shape[:2] != (self.image_size, self.image_size) and key not in self._warned_resize:
            self._warned_resize.add(key)
            warnings.warn(f"resizing {key!r} images of {image.shape[1]}x{image.shape[0]} to the policy's "
                          f"{self.image_size}x{self.image_size}", stacklevel=4)
        return resize_image(image, self.image_size, key)

    def __call__(self, observations: list[dict], trim: bool = True) -> dict[str, np.ndarray]:
        if not observations:
            raise ValueError("no observations")
        for obs in observations:
            self.check_keys(obs)
        feeds = {key: np.stack([self.image(obs, key) for obs in observations]) for key in self.image_keys}
        ids, masks = zip(*(self.prompts(obs.get("prompt", obs.get("instruction"))) for obs in observations))
        ids, masks = np.stack(ids), np.stack(masks)
        feeds["prompt_ids"], feeds["prompt_mask"] = trim_prompt_padding(ids, masks) if trim else (ids, masks)
        if self.state_stats is not None:
            feeds["state"] = np.stack([normalize_state(obs["state"], self.state_stats) for obs in observations])
        if self.prefix_actions:
            feeds["action_prefix"] = np.stack([self.prefix(obs.get("action_prefix")) for obs in observations])
        elif any(obs.get("action_prefix") is not None for obs in observations):
            raise ValueError("this policy takes no action_prefix (it was trained with model.prefix_actions 0)")
        return feeds

    def prefix(self, committed) -> np.ndarray:
        """Committed actions float [d, D] (or None) -> int64 [K*D]: their tokens, then -1."""
        out = np.full(self.chunk_size * self.actions.dim, -1, np.int64)
        if committed is None or len(committed) == 0:
            return out
        committed = np.asarray(committed, np.float32)
        if committed.ndim != 2 or committed.shape[1] != self.actions.dim or len(committed) > self.prefix_actions:
            raise ValueError(f"observation['action_prefix'] must be [d <= {self.prefix_actions}, {self.actions.dim}], "
                             f"got {list(committed.shape)}")
        if not np.all(np.isfinite(committed)):
            raise ValueError("observation['action_prefix'] contains NaN or inf")
        ids = self.actions.encode(committed).reshape(-1)
        out[: len(ids)] = ids
        return out


def trim_prompt_padding(ids, mask):
    """Drop the leading columns that are padding in every row: ids, mask [B, L] -> [B, L'].

    Prompts are left-padded and the model skips pads, so the actions do not change; the sequence
    (and the compute of every layer) gets shorter. Works on numpy arrays and CPU torch tensors.
    """
    used = np.asarray(mask).any(axis=0)
    start = int(used.argmax()) if used.any() else used.shape[0] - 1
    return ids[:, start:], mask[:, start:]
