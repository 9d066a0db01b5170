"""`OnnxPolicy`: an exported policy directory run on onnxruntime, without torch.

    policy = OnnxPolicy("runs/demo/export")          # device="auto": TensorRT, CUDA or CPU
    actions = policy.act({"image": rgb_uint8, "state": state, "prompt": "reach the red cube"})  # [K, D]

Providers are chosen by what the machine really has (a CUDA driver with a device, the provider
libraries), with one line saying which. The export's reference inputs are run on the chosen
provider at load: a provider whose answers differ from the export's falls back to the next one
(TensorRT, then CUDA, then the CPU) with a warning, and the policy refuses to load only when the
CPU disagrees too. Autoregressive decoding keeps the KV cache where the provider computes it
(IO binding: on the GPU it never crosses to the host between steps); on a GPU the parallel graph
replays a captured CUDA graph at batch 1, and falls back to the plain session if that fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from policies.actions import ActionTokenizer
from policies.preprocess import ObservationEncoder
from policies.spec import POLICY_FILE, PolicySpec, PolicySpecError

TOKENIZER_FILE = "tokenizer.json"
REFERENCE_FILE = "reference.npz"
MAX_TENSORRT_BATCH = 8


class PolicyLoadError(RuntimeError):
    """The exported directory is missing a file, its files disagree, or no provider runs it correctly."""


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


def provider_chain(device: str = "auto") -> tuple[list[tuple[str, list]], str]:
    """-> (candidates, why): each candidate a (label, providers) to try in order; the last is the CPU.
    device: auto, cpu, cuda or tensorrt."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda", "tensorrt"):
        raise ValueError(f"device must be auto, cpu, cuda or tensorrt, got {device!r}")
    cpu = ("CPU", ["CPUExecutionProvider"])
    if device == "cpu":
        return [cpu], "asked for"
    available = ort.get_available_providers()
    gpus = _cuda_device_count()
    if gpus == 0 or "CUDAExecutionProvider" not in available:
        why = "no CUDA device" if gpus == 0 else "onnxruntime was built without CUDA (install onnxruntime-gpu)"
        if device != "auto":
            raise RuntimeError(f"device={device!r} asked for, but {why}")
        return [cpu], why
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, when torch is not there to load them
        except Exception:
            pass
    cuda = ("CUDA", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    chain = []
    if device in ("auto", "tensorrt") and "TensorrtExecutionProvider" in available and _tensorrt_present():
        chain.append(("TensorRT", ["TensorrtExecutionProvider", *cuda[1]]))
    elif device == "tensorrt":
        raise RuntimeError("device='tensorrt' asked for, but the TensorRT libraries are not installed")
    chain += [cuda, cpu] if device != "tensorrt" else [cpu]
    return chain, f"{gpus} CUDA device{'s' if gpus > 1 else ''}"


def tensorrt_options(spec: PolicySpec, path: Path, graph: str) -> dict:
    """TensorRT provider options: an engine cache per export, and one optimization profile that
    covers batch 1..MAX_TENSORRT_BATCH and every prompt length (the prompt's length is dynamic)."""
    def shapes(batch: int, prompt: int) -> str:
        dims = [f"{key}:{batch}x{spec.image_size}x{spec.image_size}x3" for key in spec.image_keys]
        dims += [f"prompt_ids:{batch}x{prompt}", f"prompt_mask:{batch}x{prompt}"]
        if spec.state_dim:
            dims.append(f"state:{batch}x{spec.state_dim}")
        if spec.prefix_actions:
            dims.append(f"action_prefix:{batch}x{spec.chunk_size * spec.action_dim}")
        return ",".join(dims)

    return {
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(engine_cache_dir(path)),
        "trt_timing_cache_enable": "1",
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(1, spec.max_prompt_tokens),
        "trt_profile_max_shapes": shapes(MAX_TENSORRT_BATCH, spec.max_prompt_tokens),
    }


def engine_cache_dir(path: Path) -> Path:
    """`$VLA_TRT_CACHE` or ~/.cache/vla/tensorrt, one folder per export (by its graphs' content)."""
    digest = hashlib.sha256()
    for graph in sorted(path.glob("*.onnx")):
        digest.update(graph.name.encode())
        digest.update(str(graph.stat().st_size).encode())
        with open(graph, "rb") as f:
            digest.update(f.read(1 << 20))
    root = Path(os.environ.get("VLA_TRT_CACHE", Path.home() / ".cache" / "vla" / "tensorrt"))
    cache = root / digest.hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    return cache


class OnnxPolicy:
    """Policy protocol over an exported directory. act(observation) -> float32 [K, D]."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 cuda_graphs: bool = True, verbose: bool = True, check_reference: bool = True):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # errors only: no provider warnings on CPU-only machines
        self.path = Path(path)
        try:
            self.spec = PolicySpec.load(self.path)
        except PolicySpecError as err:
            raise PolicyLoadError(str(err)) from None
        for name in [*self.spec.files, TOKENIZER_FILE]:
            if not (self.path / name).exists():
                raise PolicyLoadError(f"{self.path}: missing {name} (listed in {POLICY_FILE})")
        self.threads = threads
        self.encoder = ObservationEncoder.for_spec(self.spec, self.path / TOKENIZER_FILE)
        self.actions = ActionTokenizer(self.spec.norm_stats["action"], self.spec.vocab_size, self.spec.n_bins)
        self.chunk_shape = (self.spec.chunk_size, self.spec.action_dim)

        chain, why = provider_chain(device)
        reference = self._reference() if check_reference else None
        for i, (label, providers) in enumerate(chain):
            last = i == len(chain) - 1
            try:
                self.sessions = {name: self._session(name, providers, label) for name in self.spec.files}
                self._check_graphs()
                active = self.sessions[self.spec.files[0]].get_providers()
                wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
                if active[0] != wanted:  # onnxruntime quietly runs on the next provider when one fails to load
                    raise RuntimeError(f"the {label} provider did not load (check the CUDA and cuDNN libraries)")
                self.on_gpu = active[0] != "CPUExecutionProvider"
                self._device_type = "cuda" if self.on_gpu else "cpu"
                self._graph_runner = self._cuda_graph_runner() if self.on_gpu and cuda_graphs else None
                if reference is not None:
                    self._check_reference(reference, label)
                break
            except PolicyLoadError:
                raise
            except Exception as err:
                message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                if last:
                    raise PolicyLoadError(f"{self.path}: {label}: {message}") from None
                warnings.warn(f"OnnxPolicy: {label} unusable ({message}); falling back to {chain[i + 1][0]}",
                              stacklevel=2)
                why = f"{label} failed"
        self.device_description = f"{label} ({why})"
        if verbose:
            print(f"OnnxPolicy: {self.path.name} ({self.spec.decoding}) on {self.device_description}", file=sys.stderr)
        # Exports before the prompt length was dynamic take the full padded length only.
        prompt_input = next(i for i in self.sessions[self.spec.files[0]].get_inputs() if i.name == "prompt_ids")
        self._prompt_length_is_dynamic = isinstance(prompt_input.shape[1], str)
        self.metadata = self.spec.metadata(runtime="onnxruntime", device=self.device_description,
                                           providers=self.sessions[self.spec.files[0]].get_providers())

    # ------------------------------------------------------------------ loading
    def _session(self, name: str, providers: list, label: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or default_cpu_threads(self.path, name)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if label == "TensorRT":
            if name == "decode.onnx":  # one token at a time over a growing cache: CUDA serves it
                providers = providers[1:]
            else:
                providers = [("TensorrtExecutionProvider", tensorrt_options(self.spec, self.path, name)), *providers[1:]]
        try:
            return ort.InferenceSession(str(self.path / name), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for damaged files
            if label == "CPU":
                raise PolicyLoadError(f"{self.path / name}: cannot load ({str(err).splitlines()[0]})") from None
            raise

    def _check_graphs(self) -> None:
        """The graphs must take what policy.json says: cameras and their size, state size."""
        first = self.sessions[self.spec.files[0]]
        inputs = {i.name: i.shape for i in first.get_inputs()}
        size = self.spec.image_size
        for key in self.spec.image_keys:
            if key not in inputs or list(inputs[key][1:]) != [size, size, 3]:
                raise PolicyLoadError(f"{self.path}: {self.spec.files[0]} takes {key} {inputs.get(key)}, "
                                      f"but {POLICY_FILE} says [B, {size}, {size}, 3]")
        if self.spec.state_dim and ("state" not in inputs or inputs["state"][1] != self.spec.state_dim):
            raise PolicyLoadError(f"{self.path}: the graph's state input {inputs.get('state')} does not match "
                                  f"state_dim {self.spec.state_dim} in {POLICY_FILE}")

    def _reference(self) -> dict | None:
        if not self.spec.reference:
            return None
        path = self.path / self.spec.reference
        if not path.exists():
            raise PolicyLoadError(f"{self.path}: missing {self.spec.reference} (listed in {POLICY_FILE})")
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def _check_reference(self, reference: dict, label: str) -> None:
        """The export's reference inputs on this provider must give the export's action tokens."""
        inputs = {k: v for k, v in reference.items() if not k.startswith("expected_")}
        samples = len(inputs["prompt_ids"])
        ids, logits = map(np.concatenate, zip(*(self.run_tokens({k: v[i : i + 1] for k, v in inputs.items()})
                                                for i in range(samples))))
        expected_ids, expected_logits = reference["expected_action_ids"], reference["expected_action_logits"]
        scale = max(1.0, float(np.abs(expected_logits).max()))
        difference = float(np.abs(logits - expected_logits).max())
        mismatched = float((ids != expected_ids).mean())
        tolerance = (0.02 if self.spec.fp16 else 0.01) * scale
        self.reference_check = {"provider": label, "max_logit_diff": difference, "mismatched_tokens": mismatched}
        if difference > tolerance or mismatched > 0.01:
            raise RuntimeError(f"reference mismatch: {mismatched:.1%} of action tokens differ, largest logit "
                               f"difference {difference:.2g} (tolerance {tolerance:.2g})")

    def _cuda_graph_runner(self):
        if self.spec.decoding != "parallel":
            return None
        try:
            return _CudaGraphRunner(self.path / "model.onnx", self.spec, self.threads)
        except Exception as err:
            warnings.warn(f"OnnxPolicy: CUDA graph capture unavailable ({str(err).splitlines()[0]}); "
                          "using the plain CUDA session", stacklevel=3)
            return None

    # ------------------------------------------------------------------ inference
    def reset(self) -> None:
        """Stateless between decisions."""

    def preprocess(self, observations: list[dict]) -> dict[str, np.ndarray]:
        trim = self._prompt_length_is_dynamic and self._graph_runner is None
        return self.encoder(observations, trim=trim)

    def run_tokens(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs (`preprocess`'s) -> (action ids int64 [B, K*D], action logits float32 [B, K*D, n_bins])."""
        if self.spec.decoding == "parallel":
            if self._graph_runner is not None and len(feeds["prompt_ids"]) == 1:
                try:
                    return self._graph_runner.run(feeds)
                except Exception as err:
                    warnings.warn(f"OnnxPolicy: CUDA graph replay failed ({str(err).splitlines()[0]}); "
                                  "using the plain CUDA session from now on", stacklevel=2)
                    self._graph_runner = None
            ids, logits = self.sessions["model.onnx"].run(["action_ids", "action_logits"], feeds)
            return ids, logits
        return self._generate(feeds)

    def _generate(self, feeds: dict) -> tuple[np.ndarray, np.ndarray]:
        """Autoregressive decoding: prefill once, then one decode step per action token. The KV cache
        (and the cross-attention memory) stay bound where the provider computed them."""
        prefill, decode = self.sessions["prefill.onnx"], self.sessions["decode.onnx"]
        layers = self.spec.num_layers
        cross = self.spec.fusion == "cross_attention"
        device = self._device_type
        binding = prefill.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for output in prefill.get_outputs():
            binding.bind_output(output.name, device)
        prefill.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits, token, valid, position = (outputs[i].numpy() for i in range(4))
        cache = outputs[4 : 4 + 2 * layers]
        memory = outputs[-1] if cross else None
        tokens, all_logits = [token], [logits]
        names = [i.name for i in decode.get_inputs()]
        output_names = [o.name for o in decode.get_outputs()]
        for _ in range(self.spec.chunk_size * self.spec.action_dim - 1):
            valid = np.concatenate([valid, np.ones_like(valid[:, :1])], axis=1)
            binding = decode.io_binding()
            for name, value in zip(names[:3], (token[:, None], position, valid)):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name, value in zip(names[3:], [*cache] + ([memory] if cross else [])):
                binding.bind_ortvalue_input(name, value)
            for name in output_names:
                binding.bind_output(name, device)
            decode.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            logits, token = outputs[0].numpy(), outputs[1].numpy()
            cache = outputs[2:]
            position = position + 1
            tokens.append(token)
            all_logits.append(logits)
        return np.stack(tokens, axis=1), np.stack(all_logits, axis=1)

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        ids, _ = self.run_tokens(self.preprocess(observations))
        return self.actions.decode(ids.reshape(len(ids), *self.chunk_shape))

    def act(self, observation: dict) -> np.ndarray:
        return self.act_batch([observation])[0]


class _CudaGraphRunner:
    """Batch-1 parallel decoding with IO binding and a captured CUDA graph (static shapes: the
    prompt stays padded to its full length)."""

    def __init__(self, model_path: Path, spec: PolicySpec, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 1
        providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        size, length = spec.image_size, spec.max_prompt_tokens
        shapes = {**{key: ((1, size, size, 3), np.uint8) for key in spec.image_keys},
                  "prompt_ids": ((1, length), np.int64), "prompt_mask": ((1, length), np.int64),
                  "state": ((1, spec.state_dim), np.float32),
                  "action_prefix": ((1, spec.chunk_size * spec.action_dim), np.int64)}
        names = [i.name for i in self.session.get_inputs()]
        self.inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(shapes[name][0], shapes[name][1], "cuda", 0)
                       for name in names}
        tokens = spec.chunk_size * spec.action_dim
        self.ids = ort.OrtValue.ortvalue_from_shape_and_type((1, tokens), np.int64, "cuda", 0)
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type((1, tokens, spec.n_bins), np.float32, "cuda", 0)
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
