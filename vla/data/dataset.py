"""Training data: episodes from one or more HDF5 stores.

Each sample is one time step t of one episode: each camera's frame and the state at t, the episode's
prompt, and the action chunk a[t : t + K] as token ids (positions past the episode's end are ignored).
Everything but the frames is read at load and kept in memory (a few floats per step). Frames are read
when a batch needs them (`frames="lazy"`: HDF5 chunks of one frame, through the page cache, so memory
does not grow with the dataset) or loaded once (`frames="memory"`). Both resize with the deployed
policy's own function (`policies.preprocess.resize_image`) and the prompts and states go through its
`ObservationEncoder`, so training sees what deployment sees.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from policies.actions import ActionTokenizer, action_statistics
from policies.preprocess import ObservationEncoder, normalize_state, resize_image, trim_prompt_padding
from vla.data.store import EpisodeReader
from vla.errors import DatasetError
from vla.model.vla import IGNORE_INDEX, Batch

FRAME_MODES = ("lazy", "memory")


@dataclass
class RawEpisodes:
    """Everything read from the stores but the frames, which `frames` locates (or holds)."""

    frames: "Frames"
    target_positions: list[np.ndarray | None]  # per episode float32 [T, 3] (privileged), where recorded
    states: list[np.ndarray]  # per episode float32 [T, S]
    actions: list[np.ndarray]  # per episode float32 [T, D]
    instructions: list[str]
    targets: list[str]
    env_args: dict
    fps: float
    action_space: dict  # {"names", "hold"} as the stores record them, or {}
    tasks: list[str] = field(default_factory=list)  # per episode, the env id or task name it came from

    @property
    def num_steps(self) -> int:
        return sum(len(a) for a in self.actions)

    def subset(self, episodes: list[int]) -> RawEpisodes:
        """The same stores restricted to some episodes (a validation split)."""
        pick = lambda values: [values[i] for i in episodes]  # noqa: E731
        return RawEpisodes(self.frames.subset(episodes), pick(self.target_positions), pick(self.states),
                           pick(self.actions), pick(self.instructions), pick(self.targets), self.env_args, self.fps,
                           self.action_space, pick(self.tasks) if self.tasks else [])


class Frames:
    """Camera frames by (episode, step), resized to the model's size.

    get(key, episodes int [B], steps int [B]) -> uint8 [B, s, s, 3]. Lazy frames open their HDF5 files
    on first use in each process (h5py handles do not survive a fork), so DataLoader workers can read.
    """

    def __init__(self, locations: list[tuple[str, str]], image_keys: list[str], image_size: int, mode: str):
        if mode not in FRAME_MODES:
            raise DatasetError(f"data.frames must be one of {', '.join(FRAME_MODES)}, got {mode!r}")
        self.locations = locations  # per episode: (store path, group name)
        self.image_keys, self.image_size, self.mode = list(image_keys), image_size, mode
        self._files: dict[str, h5py.File] = {}
        self._pid = None
        self.loaded: dict[str, list[np.ndarray]] | None = None
        if mode == "memory":
            self.loaded = {key: [self._read_episode(e, key) for e in range(len(locations))] for key in image_keys}

    def subset(self, episodes: list[int]) -> Frames:
        out = Frames.__new__(Frames)
        out.locations = [self.locations[e] for e in episodes]
        out.image_keys, out.image_size, out.mode = self.image_keys, self.image_size, self.mode
        out._files, out._pid = {}, None
        out.loaded = None if self.loaded is None else {k: [v[e] for e in episodes] for k, v in self.loaded.items()}
        return out

    def _group(self, episode: int) -> h5py.Group:
        if self._pid != os.getpid():  # a new process (a DataLoader worker): its own handles
            self._files, self._pid = {}, os.getpid()
        path, name = self.locations[episode]
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
        return self._files[path]["data"][name]["obs"]

    def _read_episode(self, episode: int, key: str) -> np.ndarray:
        frames = self._group(episode)[key][()]
        return np.stack([resize_image(f, self.image_size, key) for f in frames])

    def get(self, key: str, episodes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        if self.loaded is not None:
            return np.stack([self.loaded[key][e][t] for e, t in zip(episodes, steps)])
        return np.stack([resize_image(self._group(e)[key][t], self.image_size, key) for e, t in zip(episodes, steps)])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_pid": None}


def camera_keys(paths: list[str | Path]) -> list[str]:
    """The cameras of the first episode of the first store."""
    if not paths:
        raise DatasetError("no dataset given (data.paths is empty)")
    with EpisodeReader(paths[0]) as reader:
        if len(reader) == 0:
            raise DatasetError(f"{paths[0]}: holds no episodes")
        keys = reader.camera_keys(0)
    if not keys:
        raise DatasetError(f"{paths[0]}: data/demo_0/obs holds no camera (uint8 [T, H, W, 3])")
    return keys


def load_episodes(paths: list[str | Path], image_size: int, image_keys: list[str], frames: str = "lazy") -> RawEpisodes:
    if not paths:
        raise DatasetError("no dataset given (data.paths is empty)")
    raw = RawEpisodes(None, [], [], [], [], [], {}, 10.0, {}, [])
    locations = []
    for path in paths:
        with EpisodeReader(path) as reader:
            if len(reader) == 0:
                raise DatasetError(f"{path}: holds no episodes")
            raw.env_args = raw.env_args or reader.env_args
            if reader.action_space and raw.action_space and reader.action_space != raw.action_space:
                raise DatasetError(f"{path}: its action space {reader.action_space} differs from "
                                   f"{paths[0]}'s {raw.action_space}")
            raw.action_space = raw.action_space or reader.action_space
            for i in range(len(reader)):
                cameras = reader.camera_keys(i)
                if any(key not in cameras for key in image_keys):
                    raise DatasetError(f"{path}: data/{reader.names[i]} has cameras {cameras}, the model takes "
                                       f"{image_keys}")
                extra = ("target_position",) if "target_position" in reader.observation_keys(i) else ()
                ep = reader.episode(i, keys=("state", *extra))
                raw.target_positions.append(ep.observations.get("target_position"))
                raw.states.append(ep.observations["state"].astype(np.float32))
                raw.actions.append(ep.actions.astype(np.float32))
                raw.instructions.append(str(ep.attrs.get("instruction", "")))
                raw.targets.append(str(ep.attrs.get("target", "")))
                raw.tasks.append(str(ep.attrs.get("task", "")))
                raw.fps = float(ep.attrs.get("fps", raw.fps))
                locations.append((str(path), reader.names[i]))
    dims = {a.shape[1] for a in raw.actions}
    if len(dims) != 1:
        raise DatasetError(f"episodes disagree on the action dimension: {sorted(dims)}")
    raw.frames = Frames(locations, image_keys, image_size, frames)
    return raw


def validation_split(num_episodes: int, fraction_or_count: float, seed: int) -> tuple[list[int], list[int]]:
    """(training episodes, held-out episodes): a seeded random choice of `fraction_or_count` episodes
    (a fraction when below 1, a count otherwise); at least one episode stays for training."""
    if fraction_or_count <= 0:
        return list(range(num_episodes)), []
    count = round(fraction_or_count * num_episodes) if fraction_or_count < 1 else int(fraction_or_count)
    count = min(max(count, 1), num_episodes - 1)
    if count <= 0:
        raise DatasetError(f"a validation split needs at least 2 episodes, the data has {num_episodes}")
    held = set(np.random.default_rng(seed).permutation(num_episodes)[:count].tolist())
    return [e for e in range(num_episodes) if e not in held], sorted(held)


def compute_norm_stats(raw: RawEpisodes) -> dict:
    return {
        "action": action_statistics(np.concatenate(raw.actions)),
        "state": action_statistics(np.concatenate(raw.states)),
    }


class DemoDataset(torch.utils.data.Dataset):
    """Tensors for every time step; `batch(indices)` gathers a model `Batch` without a DataLoader."""

    def __init__(
        self,
        raw: RawEpisodes,
        encoder: ObservationEncoder,
        actions: ActionTokenizer,
        chunk_size: int,
        aux_loss: str = "none",
    ):
        if actions.dim != raw.actions[0].shape[1]:
            raise DatasetError(
                f"the data's actions have {raw.actions[0].shape[1]} dimensions, the model expects {actions.dim}"
            )
        self.frames = raw.frames
        self.use_state = encoder.state_stats is not None
        if self.use_state:
            self.states = torch.from_numpy(np.concatenate([normalize_state(s, encoder.state_stats) for s in raw.states]))
        prompt_ids, prompt_masks, episode_of_step, chunks, chunk_valid = [], [], [], [], []
        for e, (instruction, acts) in enumerate(zip(raw.instructions, raw.actions)):
            ids, mask = encoder.prompts(instruction)
            prompt_ids.append(ids)
            prompt_masks.append(mask)
            steps = len(acts)
            index = np.arange(steps)[:, None] + np.arange(chunk_size)[None, :]  # [T, K]
            chunks.append(acts[np.minimum(index, steps - 1)])
            chunk_valid.append(index < steps)
            episode_of_step.append(np.full(steps, e))
        self.prompt_ids = torch.from_numpy(np.stack(prompt_ids))
        self.prompt_mask = torch.from_numpy(np.stack(prompt_masks))
        self.episode = torch.from_numpy(np.concatenate(episode_of_step))
        self.step = torch.from_numpy(np.concatenate([np.arange(len(a)) for a in raw.actions]))
        chunk_actions = np.concatenate(chunks)  # [N, K, D]
        valid = np.concatenate(chunk_valid)  # [N, K]
        ids = actions.encode(chunk_actions)
        ids = np.where(valid[..., None], ids, IGNORE_INDEX)
        self.action_ids = torch.from_numpy(ids.reshape(len(ids), -1))
        self.chunk_actions = torch.from_numpy(chunk_actions)
        self.chunk_valid = torch.from_numpy(valid)
        self.aux_target, self.aux_mask = _aux_targets(aux_loss, raw, actions, chunk_actions, valid)
        self.targets = raw.targets
        self.instructions = raw.instructions
        self.prompts = encoder.prompts

    def __len__(self) -> int:
        return len(self.episode)

    def batch(self, indices: torch.Tensor, shift: int = 0, offsets: torch.Tensor | None = None,
              prefix_lengths: torch.Tensor | None = None, noise_seeds: torch.Tensor | None = None,
              dropout_seeds: torch.Tensor | None = None) -> Batch:
        """Gather samples; with `shift > 0`, translate each image by `offsets - shift` pixels
        (offsets int [B, 2] in [0, 2 * shift], DrQ-style augmentation). `prefix_lengths` int [B]: give
        each sample its first n actions as a committed prefix (training-time action conditioning).
        `dropout_seeds` int [B] (-1: none): leave words out of those samples' instructions (`dropped_words`);
        `noise_seeds` int [B] (-1: none): then perturb them (`noisy_instruction`)."""
        episodes, steps = self.episode[indices].numpy(), self.step[indices].numpy()
        images = {key: torch.from_numpy(self.frames.get(key, episodes, steps)) for key in self.frames.image_keys}
        if shift:
            if offsets is None:
                offsets = torch.randint(0, 2 * shift + 1, (len(indices), 2))
            images = {key: shift_images(frames, shift, offsets) for key, frames in images.items()}
        episodes = self.episode[indices]
        prompt_ids, prompt_mask = self.prompt_ids[episodes], self.prompt_mask[episodes]
        rewritten = {}  # row -> its instruction, rewritten
        asked = dropout_seeds is not None or noise_seeds is not None
        for row, episode in enumerate(episodes.tolist() if asked else []):
            instruction = self.instructions[episode]
            if dropout_seeds is not None and dropout_seeds[row] >= 0:
                instruction = dropped_words(instruction, int(dropout_seeds[row]), keep=self.targets[episode])
            if noise_seeds is not None and noise_seeds[row] >= 0:
                instruction = noisy_instruction(instruction, int(noise_seeds[row]))
            if instruction != self.instructions[episode]:
                rewritten[row] = instruction
        if rewritten:
            prompt_ids, prompt_mask = prompt_ids.clone(), prompt_mask.clone()
            with warnings.catch_warnings():  # a made-up instruction cut to fit is no news to the user
                warnings.filterwarnings("ignore", "the prompt for ")
                for row, instruction in rewritten.items():
                    ids, mask = self.prompts(instruction)
                    prompt_ids[row], prompt_mask[row] = torch.from_numpy(ids), torch.from_numpy(mask)
        prompt_ids, prompt_mask = trim_prompt_padding(prompt_ids, prompt_mask)
        action_ids = self.action_ids[indices]
        prefix_ids = None
        if prefix_lengths is not None:
            dim = self.chunk_actions.shape[-1]
            given = torch.arange(action_ids.shape[1])[None] < (prefix_lengths[:, None] * dim)
            prefix_ids = torch.where(given & (action_ids >= 0), action_ids, -1)
        return Batch(
            images=images,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            state=self.states[indices] if self.use_state else None,
            action_ids=action_ids,
            aux_target=self.aux_target[indices] if self.aux_target is not None else None,
            aux_mask=self.aux_mask[indices] if self.aux_mask is not None else None,
            prefix_ids=prefix_ids,
        )


def _aux_targets(kind: str, raw: RawEpisodes, actions: ActionTokenizer, chunk_actions: np.ndarray, valid: np.ndarray):
    """Targets of the auxiliary head: the chunk normalized to [-1, 1] ("actions"), or the named object's
    position, standardized ("target"; privileged, recorded at collection)."""
    if kind == "none":
        return None, None
    if kind == "actions":
        target = actions.normalize(chunk_actions).reshape(len(chunk_actions), -1)
        mask = np.repeat(valid, chunk_actions.shape[-1], axis=1)
    else:
        if any(p is None for p in raw.target_positions):
            raise DatasetError("model.aux_loss=target needs obs/target_position in every episode (recorded by vla collect)")
        positions = np.concatenate(raw.target_positions)
        spread = positions.std(0)
        varies = spread > 1e-3  # the height of a cube resting on the table does not
        target = np.where(varies, (positions - positions.mean(0)) / np.where(varies, spread, 1.0), 0.0)
        mask = np.broadcast_to(varies, target.shape)
    return torch.from_numpy(target.astype(np.float32)), torch.from_numpy(mask.astype(np.float32))


def dropped_words(instruction: str, seed: int, keep: str = "", rate: float = 0.25) -> str:
    """The instruction with each word left out with probability `rate`, but never `keep` (the episode's
    recorded target, so that the sample still says which object it acts on) and never all of them.

    At deployment a lexicon leaves out the words of a new phrasing that it has no taught word for ("leave it
    there" comes out "it"): trained on instructions with words missing, the policy reads the task from the
    words that are left rather than from one it may not get.
    """
    rng = np.random.default_rng(seed)
    words = instruction.split()
    kept = [word for word in words if word == keep or rng.random() >= rate]
    return " ".join(kept or [words[int(rng.integers(len(words)))]])


def noisy_instruction(instruction: str, seed: int, replace: float = 0.2, insert: int = 2) -> str:
    """The instruction with some words replaced by, and a few more inserted as, random letter strings.

    It teaches a policy that words it does not know carry nothing, so that a phrasing it never saw still
    works through the words it does know (the object's colour, say). The strings are random: no word
    list, and nothing that maps words to tasks.
    """
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def junk() -> str:
        return "".join(rng.choice(letters, int(rng.integers(3, 9))))

    words = [junk() if rng.random() < replace else word for word in instruction.split()]
    for _ in range(int(rng.integers(0, insert + 1))):
        words.insert(int(rng.integers(0, len(words) + 1)), junk())
    return " ".join(words)


def shift_images(images: torch.Tensor, shift: int, offsets: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3]: pad by `shift` with edge pixels, then crop back at `offsets` [B, 2]."""
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (shift,) * 4, mode="replicate")
    rows = offsets[:, 0, None] + torch.arange(h)[None]  # [B, H]
    cols = offsets[:, 1, None] + torch.arange(w)[None]  # [B, W]
    batch_index = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return out.to(torch.uint8)
