"""`OnnxPolicy`: an exported policy directory run on onnxruntime, without torch.

    policy = OnnxPolicy("runs/demo/export")          # device="auto": TensorRT, CUDA or CPU
    actions = policy.act({"image": rgb_uint8, "state": state, "prompt": "reach the red cube"})  # [K, D]

Providers are chosen by what the machine really has (a CUDA driver with a device, the provider
libraries), with one line saying which. On a GPU, inputs and outputs are bound to device memory
(IO binding), the KV cache stays on the device between decode steps, and the parallel graph
replays a captured CUDA graph at batch 1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from policies.actions import ActionTokenizer
from policies.preprocess import PromptTokenizer, normalize_state, resize_image, trim_prompt_padding

POLICY_FILE = "policy.json"
TOKENIZER_FILE = "tokenizer.json"
SUPPORTED_FORMAT = 1


class PolicyLoadError(RuntimeError):
    """The exported directory is missing a file or its files disagree."""


def _cuda_device_count() -> int:
    """Devices the CUDA driver reports; 0 without a driver. Never raises."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return count.value


def _tensorrt_present() -> bool:
    return any(ctypes.util.find_library(n) for n in ("nvinfer", "nvinfer_10")) or _loadable("libnvinfer.so.10")


def _loadable(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def choose_providers(device: str = "auto") -> tuple[list, str]:
    """-> (providers for InferenceSession, a one-line reason). device: auto, cpu, cuda or tensorrt."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda", "tensorrt"):
        raise ValueError(f"device must be auto, cpu, cuda or tensorrt, got {device!r}")
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"], "CPU (asked for)"
    gpus = _cuda_device_count()
    if gpus == 0 or "CUDAExecutionProvider" not in available:
        why = "no CUDA device" if gpus == 0 else "onnxruntime was built without CUDA (install onnxruntime-gpu)"
        if device != "auto":
            raise RuntimeError(f"device={device!r} asked for, but {why}")
        return ["CPUExecutionProvider"], f"CPU ({why})"
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, when torch is not there to load them
        except Exception:
            pass
    providers: list = []
    if device in ("auto", "tensorrt") and "TensorrtExecutionProvider" in available and _tensorrt_present():
        providers.append(("TensorrtExecutionProvider", {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1"}))
    elif device == "tensorrt":
        raise RuntimeError("device='tensorrt' asked for, but the TensorRT libraries are not installed")
    providers += ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return providers, f"{'TensorRT + ' if len(providers) == 3 else ''}CUDA ({gpus} device{'s' if gpus > 1 else ''})"


class OnnxPolicy:
    """Policy protocol over an exported directory. act(observation) -> float32 [K, D]."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 cuda_graphs: bool = True, verbose: bool = True):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # errors only: no provider warnings on CPU-only machines
        self.path = Path(path)
        self.meta = self._read_metadata(self.path)
        self.providers, why = choose_providers(device)
        self.sessions, session_options = {}, {}
        for name in self.meta["files"]:
            options = session_options[name] = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads or default_cpu_threads(self.path, name)
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self.sessions[name] = self._session(name, options)
        active = self.sessions[self.meta["files"][0]].get_providers()
        self.on_gpu = "CUDAExecutionProvider" in active or "TensorrtExecutionProvider" in active
        if "CUDAExecutionProvider" in [p if isinstance(p, str) else p[0] for p in self.providers] and not self.on_gpu:
            why = "CPU (the CUDA provider failed to load; check the CUDA and cuDNN libraries)"
        self.device_description = why
        if verbose:
            print(f"OnnxPolicy: {self.path.name} ({self.meta['decoding']}) on {why}", file=sys.stderr)
        self._check_graphs()

        self.prompts = PromptTokenizer(self.path / TOKENIZER_FILE, self.meta["max_prompt_tokens"], self.meta["pad_id"])
        self.actions = ActionTokenizer(self.meta["norm_stats"]["action"], self.meta["vocab_size"], self.meta["n_bins"])
        self.chunk_shape = (self.meta["chunk_size"], self.meta["action_dim"])
        self._warned_resize = False
        prompt_input = next(i for i in self.sessions[self.meta["files"][0]].get_inputs() if i.name == "prompt_ids")
        # Exports before the prompt length was dynamic take the full padded length only.
        self._prompt_length_is_dynamic = isinstance(prompt_input.shape[1], str)
        self._graph_runner = None
        if self.on_gpu and cuda_graphs and self.meta["decoding"] == "parallel":
            self._graph_runner = _CudaGraphRunner(self.path / "model.onnx", session_options["model.onnx"], self.meta,
                                                  self._input_names("model.onnx"))
        self.metadata = {
            "runtime": "onnxruntime",
            "device": why,
            "providers": active,
            "decoding": self.meta["decoding"],
            "action_dim": self.meta["action_dim"],
            "chunk_size": self.meta["chunk_size"],
            "image_size": self.meta["image_size"],
            "state_dim": self.meta["state_dim"],
            "control_hz": self.meta["control_hz"],
            "action_low": self.meta["action_low"],
            "action_high": self.meta["action_high"],
            "env_args": self.meta.get("env_args", {}),
        }

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _read_metadata(path: Path) -> dict:
        if not (path / POLICY_FILE).exists():
            raise PolicyLoadError(f"{path}: no {POLICY_FILE}; not an exported policy (run `vla export` first)")
        try:
            meta = json.loads((path / POLICY_FILE).read_text())
        except json.JSONDecodeError as err:
            raise PolicyLoadError(f"{path / POLICY_FILE}: invalid JSON ({err})") from None
        if meta.get("format_version") != SUPPORTED_FORMAT:
            raise PolicyLoadError(f"{path / POLICY_FILE}: format_version {meta.get('format_version')!r}, "
                                  f"this runtime reads {SUPPORTED_FORMAT}")
        required = ("decoding", "files", "image_size", "max_prompt_tokens", "pad_id", "action_dim", "chunk_size",
                    "n_bins", "vocab_size", "norm_stats", "state_dim")
        missing = [k for k in required if k not in meta]
        if missing:
            raise PolicyLoadError(f"{path / POLICY_FILE}: missing keys {missing}")
        for name in [*meta["files"], TOKENIZER_FILE]:
            if not (path / name).exists():
                raise PolicyLoadError(f"{path}: missing {name} (listed in {POLICY_FILE})")
        return meta

    def _session(self, name: str, options):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(self.path / name), sess_options=options, providers=self.providers)
        except Exception as err:  # onnxruntime raises its own exception types for damaged files
            raise PolicyLoadError(f"{self.path / name}: cannot load ({str(err).splitlines()[0]})") from None

    def _input_names(self, name: str) -> list[str]:
        return [i.name for i in self.sessions[name].get_inputs()]

    def _check_graphs(self) -> None:
        """The graphs must take what policy.json says: image size, prompt length, state size."""
        first = self.sessions[self.meta["files"][0]]
        inputs = {i.name: i.shape for i in first.get_inputs()}
        size = self.meta["image_size"]
        if "images" not in inputs or list(inputs["images"][1:]) != [size, size, 3]:
            raise PolicyLoadError(f"{self.path}: {self.meta['files'][0]} takes images {inputs.get('images')}, "
                                  f"but {POLICY_FILE} says [B, {size}, {size}, 3]")
        if self.meta["state_dim"] and ("state" not in inputs or inputs["state"][1] != self.meta["state_dim"]):
            raise PolicyLoadError(f"{self.path}: the graph's state input {inputs.get('state')} does not match "
                                  f"state_dim {self.meta['state_dim']} in {POLICY_FILE}")

    # ------------------------------------------------------------------ inference
    def reset(self) -> None:
        """Stateless between decisions."""

    def preprocess(self, observations: list[dict]) -> dict[str, np.ndarray]:
        size = self.meta["image_size"]
        images, ids, masks, states = [], [], [], []
        for obs in observations:
            if "image" not in obs:
                raise ValueError("observation is missing 'image'")
            image = np.asarray(obs["image"])
            if image.ndim == 3 and image.shape[:2] != (size, size) and not self._warned_resize:
                warnings.warn(f"OnnxPolicy: resizing {image.shape[1]}x{image.shape[0]} images to the policy's "
                              f"{size}x{size}", stacklevel=3)
                self._warned_resize = True
            images.append(resize_image(image, size))
            prompt = obs.get("prompt", obs.get("instruction"))
            if prompt is None:
                raise ValueError("observation is missing 'prompt' (the instruction)")
            prompt_ids, prompt_mask = self.prompts(prompt)
            ids.append(prompt_ids)
            masks.append(prompt_mask)
            if self.meta["state_dim"]:
                if "state" not in obs:
                    raise ValueError(f"observation is missing 'state' ({self.meta['state_dim']} values)")
                states.append(normalize_state(obs["state"], self.meta["norm_stats"]["state"]))
        ids, masks = np.stack(ids), np.stack(masks)
        if self._prompt_length_is_dynamic and self._graph_runner is None:
            ids, masks = trim_prompt_padding(ids, masks)
        feeds = {"images": np.stack(images), "prompt_ids": ids, "prompt_mask": masks}
        if states:
            feeds["state"] = np.stack(states).astype(np.float32)
        return feeds

    def run_tokens(self, images, prompt_ids, prompt_mask, state=None) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs -> (action ids int64 [B, K*D], action logits float32 [B, K*D, n_bins])."""
        feeds = {"images": images, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
        if state is not None:
            feeds["state"] = state.astype(np.float32)
        if self.meta["decoding"] == "parallel":
            if self._graph_runner is not None and len(images) == 1:
                return self._graph_runner.run(feeds)
            ids, logits = self.sessions["model.onnx"].run(["action_ids", "action_logits"], feeds)
            return ids, logits
        return self._generate(feeds)

    def _generate(self, feeds: dict) -> tuple[np.ndarray, np.ndarray]:
        """Autoregressive decoding: prefill once, then one decode step per action token."""
        prefill, decode = self.sessions["prefill.onnx"], self.sessions["decode.onnx"]
        layers = self.meta["num_layers"]
        cross = self.meta.get("fusion") == "cross_attention"
        outputs = prefill.run(None, feeds)
        logits, token, valid, position = outputs[:4]
        cache = outputs[4 : 4 + 2 * layers]
        memory = outputs[-1] if cross else None
        tokens, all_logits = [token], [logits]
        names = [i.name for i in decode.get_inputs()]
        for _ in range(self.meta["chunk_size"] * self.meta["action_dim"] - 1):
            valid = np.concatenate([valid, np.ones_like(valid[:, :1])], axis=1)
            values = [token[:, None], position, valid, *cache] + ([memory] if cross else [])
            logits, token, *cache = decode.run(None, dict(zip(names, values)))
            position = position + 1
            tokens.append(token)
            all_logits.append(logits)
        return np.stack(tokens, axis=1), np.stack(all_logits, axis=1)

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        feeds = self.preprocess(observations)
        ids, _ = self.run_tokens(feeds["images"], feeds["prompt_ids"], feeds["prompt_mask"], feeds.get("state"))
        return self.actions.decode(ids.reshape(len(ids), *self.chunk_shape))

    def act(self, observation: dict) -> np.ndarray:
        return self.act_batch([observation])[0]


class _CudaGraphRunner:
    """Batch-1 parallel decoding with IO binding and a captured CUDA graph (static shapes)."""

    def __init__(self, model_path: Path, options, meta: dict, input_names: list[str]):
        import onnxruntime as ort

        providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        size, length = meta["image_size"], meta["max_prompt_tokens"]
        shapes = {"images": ((1, size, size, 3), np.uint8), "prompt_ids": ((1, length), np.int64),
                  "prompt_mask": ((1, length), np.int64), "state": ((1, meta["state_dim"]), np.float32)}
        self.inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(*shapes[name][:1], shapes[name][1], "cuda", 0)
                       for name in input_names}
        tokens = meta["chunk_size"] * meta["action_dim"]
        self.ids = ort.OrtValue.ortvalue_from_shape_and_type((1, tokens), np.int64, "cuda", 0)
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type((1, tokens, meta["n_bins"]), np.float32, "cuda", 0)
        self.binding = self.session.io_binding()
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_ortvalue_output("action_ids", self.ids)
        self.binding.bind_ortvalue_output("action_logits", self.logits)

    def run(self, feeds: dict) -> tuple[np.ndarray, np.ndarray]:
        for name, value in self.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        self.session.run_with_iobinding(self.binding)
        return self.ids.numpy(), self.logits.numpy()


SMALL_GRAPH_BYTES = 40_000_000  # about 10M fp32 parameters


def default_cpu_threads(path: Path, graph: str) -> int:
    """One thread for the decode step of a small model, the physical cores otherwise.

    Measured on a 2-core CPU with the tiny preset (2M parameters): a one-token decode step is made
    of operators so small that the thread pool's synchronisation costs more than the split saves
    (autoregressive decision of 16 tokens: 12.2 ms p50 on 2 threads, 7.7 ms on one), while the
    parallel graph, which sees the whole sequence, still gains from both cores (2.1 ms against 2.5).
    """
    small = (path / graph).stat().st_size < SMALL_GRAPH_BYTES
    return 1 if graph == "decode.onnx" and small else _physical_cores()


def _physical_cores() -> int:
    count = os.cpu_count() or 1
    return max(1, count // 2) if count >= 8 else count
