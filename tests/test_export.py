import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import make_model, observation, sharpen
from policies.onnx_policy import OnnxPolicy, PolicyLoadError
from vla.export import ExportError, check_parity, export
from vla.policy import TorchPolicy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny parallel-decoding checkpoint and its export, shared by the tests below."""
    root = tmp_path_factory.mktemp("export")
    model = make_model(root)
    model.save_pretrained(root / "ckpt")
    meta = export(root / "ckpt", root / "onnx", parity_inputs=32)
    return root, meta


def test_parallel_export_writes_graph_metadata_and_passes_parity(exported):
    root, meta = exported
    assert sorted(p.name for p in (root / "onnx").iterdir()) == ["model.onnx", "policy.json", "reference.npz", "tokenizer.json"]
    assert meta["parity"]["inputs"] >= 32 and meta["parity"]["mismatched_tokens"] == 0
    assert meta["parity"]["max_logit_diff"] < 1e-4
    saved = json.loads((root / "onnx" / "policy.json").read_text())
    for key in ("image_size", "chunk_size", "action_dim", "norm_stats", "control_hz", "decoding", "action_low"):
        assert key in saved


def test_onnx_policy_matches_the_pytorch_policy(exported):
    root, _ = exported
    torch_policy, onnx_policy = TorchPolicy(root / "ckpt", device="cpu"), OnnxPolicy(root / "onnx", device="cpu")
    observations = [observation(i, prompt=p) for i, p in enumerate(["reach the red cube", "go to the red block"] * 4)]
    np.testing.assert_array_equal(torch_policy.act_batch(observations), onnx_policy.act_batch(observations))
    np.testing.assert_array_equal(torch_policy.act(observations[0]), onnx_policy.act(observations[0]))
    assert onnx_policy.act(observations[0]).shape == (2, 4)


@pytest.mark.parametrize("fusion", ["prefix", "cross_attention"])
def test_autoregressive_export_with_kv_cache_matches_pytorch(tmp_path, fusion):
    model = make_model(tmp_path, decoding="autoregressive", fusion=fusion)
    sharpen(model, 5.0)
    model.save_pretrained(tmp_path / "ckpt")
    meta = export(tmp_path / "ckpt", tmp_path / "onnx", parity_inputs=8)
    assert meta["files"] == ["prefill.onnx", "decode.onnx"] and meta["parity"]["mismatched_tokens"] == 0
    observations = [observation(i) for i in range(3)]
    np.testing.assert_array_equal(TorchPolicy(tmp_path / "ckpt", device="cpu").act_batch(observations),
                                  OnnxPolicy(tmp_path / "onnx", device="cpu").act_batch(observations))


def test_parity_check_fails_loudly_on_a_different_model(exported, tmp_path):
    root, _ = exported
    other = make_model(tmp_path, seed=1)
    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(other, root / "onnx", num_inputs=4, fp16=False)


def test_policies_import_and_run_without_torch(exported):
    root, _ = exported
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "transformers", "timm", "peft", "accelerate"):
            sys.modules[name] = None   # any import of these now fails
        import numpy as np
        import policies
        from policies import OnnxPolicy, ControlLoop, RemotePolicy, SafetyFilter
        policy = OnnxPolicy({str(root / "onnx")!r}, device="cpu")
        obs = {{"image": np.zeros((32, 32, 3), np.uint8), "state": np.zeros(4, np.float32), "prompt": "reach the red cube"}}
        print(policy.act(obs).shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    assert "(2, 4)" in result.stdout
    assert "on CPU" in result.stderr and result.stderr.count("\n") <= 2  # one line, no provider error spam


def test_exported_directory_problems_are_named(exported, tmp_path):
    import shutil

    root, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(root / "onnx", broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(PolicyLoadError, match="missing model.onnx"):
        OnnxPolicy(broken, device="cpu")
    shutil.copyfile(root / "onnx" / "model.onnx", broken / "model.onnx")
    meta = json.loads((broken / "policy.json").read_text())
    meta["image_size"] = 48
    (broken / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyLoadError, match="48"):
        OnnxPolicy(broken, device="cpu")
    with pytest.raises(PolicyLoadError, match="policy.json"):
        OnnxPolicy(tmp_path, device="cpu")


def test_bad_observations_are_refused_or_resized_with_a_warning(exported):
    root, _ = exported
    policy = OnnxPolicy(root / "onnx", device="cpu", verbose=False)
    obs = observation(0)
    with pytest.raises(ValueError, match="4 values"):
        policy.act({**obs, "state": np.zeros(6, np.float32)})
    with pytest.raises(ValueError, match="uint8"):
        policy.act({**obs, "image": obs["image"].astype(np.float32)})
    with pytest.raises(ValueError, match="prompt"):
        policy.act({k: v for k, v in obs.items() if k != "prompt"})
    with pytest.warns(UserWarning, match="images of 96x96"):
        actions = policy.act({**obs, "image": np.zeros((96, 96, 3), np.uint8)})
    assert actions.shape == (2, 4)


def test_export_refuses_a_non_empty_output_directory(exported):
    root, _ = exported
    with pytest.raises(ExportError, match="--overwrite"):
        export(root / "ckpt", root / "onnx")


def test_robot_runner_drives_a_user_robot_class_within_the_operator_bounds(exported, capsys):
    from helpers import RecordingRobot
    from policies import robot_runner

    root, _ = exported
    rc = robot_runner.main(["--policy", str(root / "onnx"), "--robot", "helpers:RecordingRobot", "--robot-kw",
                            "image_size=32", "--prompt", "reach the red cube", "--rate", "20", "--max-steps", "12",
                            "--action-high", "0.05", "0.05", "0.05", "1.0"])
    assert rc == 0
    robot = RecordingRobot.instances[-1]
    assert len(robot.actions) == 12 and robot.stopped
    assert max(a[:3].max() for a in robot.actions) <= np.float32(0.05)
    assert json.loads(capsys.readouterr().out)["steps"] == 12


@pytest.mark.parametrize("spec, message", [("collections:OrderedDict", "is not a Robot"),
                                           ("no_such_module:Arm", "cannot load robot class"),
                                           ("helpers", "module:Class")])
def test_robot_runner_refuses_what_is_not_a_robot(exported, capsys, spec, message):
    from policies import robot_runner

    root, _ = exported
    rc = robot_runner.main(["--policy", str(root / "onnx"), "--robot", spec, "--prompt", "reach the red cube"])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_fp16_export_passes_its_relative_parity_check(exported, tmp_path):
    root, _ = exported
    meta = export(root / "ckpt", tmp_path / "fp16", fp16=True, parity_inputs=8)
    assert meta["fp16"] is True
    assert meta["parity"]["mismatched_tokens"] <= 0.01 * meta["parity"]["tokens"]
    actions = OnnxPolicy(tmp_path / "fp16", verbose=False).act(observation(seed=3))
    assert actions.shape == (2, 4) and actions.dtype == np.float32


def test_bench_times_every_runner_in_interleaved_rounds():
    from vla.bench import time_interleaved

    calls = []
    times = time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], warmup=1, iters=4, rounds=2)
    assert [len(t) for t in times] == [4, 4]
    assert "".join(calls) == "aaa" + "bbb" + "aaa" + "bbb"  # per round: one uncounted call, then two timed


def test_a_provider_that_does_not_load_falls_back_with_one_warning(exported, monkeypatch):
    import policies.onnx_policy as onnx_policy

    root, _ = exported
    # A CUDA candidate on a machine without a GPU: onnxruntime either fails or quietly runs the session on
    # the CPU provider. The policy must say so once and run on the next candidate.
    chain = [("CUDA", ["CUDAExecutionProvider", "CPUExecutionProvider"]), ("CPU", ["CPUExecutionProvider"])]
    monkeypatch.setattr(onnx_policy, "provider_chain", lambda device: (chain, "1 CUDA device"))
    with pytest.warns(UserWarning, match="CUDA unusable") as caught:
        policy = OnnxPolicy(root / "onnx", verbose=False)
    assert len([w for w in caught if "OnnxPolicy" in str(w.message)]) == 1
    assert policy.device_description.startswith("CPU (CUDA failed)") and not policy.on_gpu
    assert policy.reference_check["provider"] == "CPU" and policy.reference_check["mismatched_tokens"] == 0


def test_a_reference_mismatch_falls_back_and_refuses_to_load_when_the_cpu_disagrees_too(exported, tmp_path,
                                                                                        monkeypatch):
    import shutil

    import policies.onnx_policy as onnx_policy

    root, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(root / "onnx", broken)
    with np.load(broken / "reference.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["expected_action_logits"] = arrays["expected_action_logits"] + 5.0  # what no provider computes
    np.savez(broken / "reference.npz", **arrays)
    with pytest.raises(PolicyLoadError, match="CPU: RuntimeError: reference mismatch"):
        OnnxPolicy(broken, device="cpu", verbose=False)

    # The first provider disagrees with the reference, the CPU agrees: fall back to the CPU, with a warning.
    real_check = OnnxPolicy._check_reference

    def check(self, reference, label):
        if label == "CUDA":
            raise RuntimeError("reference mismatch: 40% of action tokens differ")
        return real_check(self, reference, label)

    monkeypatch.setattr(OnnxPolicy, "_check_reference", check)
    chain = [("CUDA", ["CPUExecutionProvider"]), ("CPU", ["CPUExecutionProvider"])]
    monkeypatch.setattr(onnx_policy, "provider_chain", lambda device: (chain, "1 CUDA device"))
    with pytest.warns(UserWarning, match="CUDA unusable .*reference mismatch"):
        policy = OnnxPolicy(root / "onnx", verbose=False)
    assert policy.device_description.startswith("CPU (CUDA failed)")


def test_cuda_graph_capture_or_replay_failing_falls_back_to_the_plain_session(exported, monkeypatch):
    import policies.onnx_policy as onnx_policy

    root, _ = exported
    policy = OnnxPolicy(root / "onnx", device="cpu", verbose=False)
    obs = observation(4)
    expected = policy.act(obs)

    def no_capture(*args):
        raise RuntimeError("CUDA graph capture is not supported with this provider")

    monkeypatch.setattr(onnx_policy, "_CudaGraphRunner", no_capture)
    with pytest.warns(UserWarning, match="CUDA graph capture unavailable"):
        assert policy._cuda_graph_runner() is None

    class BrokenReplay:
        def run(self, feeds):
            raise RuntimeError("cudaGraphLaunch failed")

    policy._graph_runner = BrokenReplay()
    with pytest.warns(UserWarning, match="CUDA graph replay failed"):
        np.testing.assert_array_equal(policy.act(obs), expected)
    assert policy._graph_runner is None  # and it is not tried again


def test_tensorrt_gets_an_engine_cache_and_profile_shapes_for_every_camera(exported, tmp_path, monkeypatch):
    from policies.onnx_policy import MAX_TENSORRT_BATCH, tensorrt_options
    from policies.spec import PolicySpec

    root, _ = exported
    monkeypatch.setenv("VLA_TRT_CACHE", str(tmp_path / "trt"))
    spec = PolicySpec.load(root / "onnx")
    spec.image_keys = ["image", "wrist_image"]
    options = tensorrt_options(spec, root / "onnx", "model.onnx")
    assert Path(options["trt_engine_cache_path"]).parent == tmp_path / "trt"
    assert options["trt_engine_cache_enable"] == "1"
    low, high = options["trt_profile_min_shapes"], options["trt_profile_max_shapes"]
    assert "image:1x32x32x3" in low and "wrist_image:1x32x32x3" in low and "prompt_ids:1x1" in low
    assert f"wrist_image:{MAX_TENSORRT_BATCH}x32x32x3" in high
    assert f"prompt_ids:{MAX_TENSORRT_BATCH}x{spec.max_prompt_tokens}" in high and "state:" in high


def test_an_action_prefix_exports_with_parity_and_comes_back_unchanged(tmp_path):
    model = make_model(tmp_path, chunk_size=4, prefix_actions=2)
    sharpen(model, 5.0)
    model.save_pretrained(tmp_path / "ckpt")
    meta = export(tmp_path / "ckpt", tmp_path / "onnx", parity_inputs=8)
    assert meta["prefix_actions"] == 2 and meta["parity"]["mismatched_tokens"] == 0
    torch_policy, onnx_policy = TorchPolicy(tmp_path / "ckpt", device="cpu"), OnnxPolicy(tmp_path / "onnx", device="cpu")
    assert onnx_policy.metadata["prefix_actions"] == 2
    committed = np.array([[0.5, -0.5, 0.25, 1.0], [0.1, 0.2, -0.3, -1.0]], np.float32)
    obs = {**observation(3), "action_prefix": committed}
    actions = onnx_policy.act(obs)
    np.testing.assert_array_equal(actions, torch_policy.act(obs))
    # the committed actions come back (as their bins' centres); the rest is the model's
    np.testing.assert_allclose(actions[:2], onnx_policy.actions.decode(onnx_policy.actions.encode(committed)), atol=1e-6)
    with pytest.raises(ValueError, match=r"action_prefix'\] must be \[d <= 2, 4\]"):
        onnx_policy.act({**observation(3), "action_prefix": np.zeros((3, 4), np.float32)})
    plain = OnnxPolicy(tmp_path.parent / tmp_path.name / "onnx", device="cpu", verbose=False)
    assert plain.act(observation(3)).shape == (4, 4)  # no prefix: the whole chunk predicted


def test_a_two_camera_sim_policy_runs_through_eval_export_and_deploy(tmp_path, capsys):
    """The built-in sims' wrist camera, end to end: the store records both cameras, the model reads both
    (camera keys from the data), the export takes one input per key, and `vla eval` and `vla deploy` feed both."""
    from vla.cli import main as vla

    data = tmp_path / "reach.hdf5"
    assert vla(["collect", "--task", "sims/Reach-v0", "--episodes", "4", "--out", str(data),
                "--env-kw", "image_size=32", "--env-kw", "wrist_camera=true"]) == 0
    settings = [f"data.paths=[{data}]", "steps=2", "batch_size=8", "checkpoint_every=2", "model.vision.image_size=32",
                "model.aux_loss=none"]
    assert vla(["train", "--config", "demo", *[a for s in settings for a in ("--set", s)],
                "--out", str(tmp_path / "run")]) == 0
    assert vla(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    spec = json.loads((tmp_path / "export" / "policy.json").read_text())
    assert spec["image_keys"] == ["image", "wrist_image"] and spec["parity"]["mismatched_tokens"] == 0
    import onnx

    inputs = [i.name for i in onnx.load(tmp_path / "export" / "model.onnx").graph.input]
    assert "image" in inputs and "wrist_image" in inputs
    capsys.readouterr()
    assert vla(["eval", "--policy", str(tmp_path / "export"), "--episodes", "2", "--videos", "0",
                "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["num_episodes"] == 2
    assert vla(["deploy", "--policy", str(tmp_path / "export"), "--sim", "sims/Reach-v0", "--episodes", "2",
                "--out", str(tmp_path / "deploy")]) == 0
    deployed = json.loads((tmp_path / "deploy" / "deploy.json").read_text())
    assert deployed["num_episodes"] == 2 and deployed["safe_stops"] == 0
    assert deployed["policy"]["image_keys"] == ["image", "wrist_image"]
