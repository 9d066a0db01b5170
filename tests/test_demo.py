import json

import pytest

from vla.demo import run_demo


@pytest.mark.slow
def test_miniature_demo_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(out=out, episodes=6, steps=3, eval_episodes=2, deploy_episodes=1, bench_iters=2)

    for path in ("data/demos.hdf5", "train/policy/model.safetensors", "eval_torch/eval.json", "export/policy.json",
                 "deploy/deploy.json", "bench.json", "report.md", "report.html", "summary.json",
                 "training_curve.png"):
        assert (out / path).exists(), path
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["task"] == "sims/Reach-v0"
    assert on_disk == summary
    assert 0.0 <= summary["success_rate_torch"] <= 1.0 and 0.0 <= summary["success_rate_onnx"] <= 1.0
    assert summary["total_wall_s"] > 0
    scenes = summary["scenes"]  # the evaluation seeds are new scenes, away from every demonstrated one
    assert scenes["shared_seeds"] == 0 and scenes["evaluated_scenes"] == 3 and scenes["nearest_demo_cm_min"] > 0
    assert summary["scenes"]["torch_seeds"] != summary["scenes"]["onnx_seeds"]
    report = (out / "report.md").read_text()
    for heading in ("PyTorch", "ONNX", "latency", "configs"):
        assert heading.lower() in report.lower(), heading

    capsys.readouterr()
    run_demo(out=out, episodes=6, steps=3, eval_episodes=2, deploy_episodes=1, bench_iters=2)
    printed = capsys.readouterr().out
    for stage in ("collect", "train", "eval", "export", "deploy", "bench"):
        assert f"[{stage}] output exists" in printed, stage
