"""The pretrained workflow end to end, on checkpoints in the published layouts (tests/pretrained_fixtures.py):
`vla train` with the llama-3.2-1b preset pointed at a Llama 3.2-style directory and a SigLIP ViT in timm's
layout, LoRA on, checkpoint, resume, export with parity, eval in a sim, serve to openpi's client; and the
same with two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrained_fixtures import LLAMA_32_1B_CONFIG, SIGLIP_ARCH, SIGLIP_SMALL, llama32_dir, siglip_dir
from vla.cli import main as vla

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    from vla.data.collect import collect

    root = tmp_path_factory.mktemp("pretrained")
    llama, siglip = llama32_dir(root / "Llama-3.2-1B"), siglip_dir(root / "siglip")
    collect("sims/Reach-v0", episodes=6, out=root / "demos.hdf5", seed=0, env_kwargs={"image_size": 64},
            progress=False)
    return root, llama, siglip


def recipe(fixtures, *extra) -> list[str]:
    root, llama, siglip = fixtures
    settings = ["model_preset=llama-3.2-1b", f"model.backbone.pretrained={llama}",
                f"model.vision.pretrained=local-dir:{siglip}", "model.vision.image_size=64",
                f"data.paths=[{root / 'demos.hdf5'}]", "steps=4", "batch_size=4", "log_every=1",
                "checkpoint_every=2", "optim.warmup_steps=1", *extra]
    return ["train", "--config", "demo", *[a for s in settings for a in ("--set", s)]]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def assert_tied(model) -> None:
    from vla.model.checkpoint import head_is_tied

    assert model._llama_base().config.tie_word_embeddings and head_is_tied(model)


def test_the_fixtures_have_the_published_layouts(fixtures):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    _, llama, siglip = fixtures
    config = json.loads((llama / "config.json").read_text())
    assert set(config) == set(LLAMA_32_1B_CONFIG)
    for key in ("tie_word_embeddings", "rope_theta", "rope_scaling", "model_type", "hidden_act"):
        assert config[key] == LLAMA_32_1B_CONFIG[key], key
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    with safe_open(str(llama / "model.safetensors"), "pt") as weights:  # tied: the head is not stored
        assert "model.embed_tokens.weight" in weights.keys() and "lm_head.weight" not in weights.keys()
    tokenizer = AutoTokenizer.from_pretrained(llama)
    assert tokenizer.convert_tokens_to_ids("<|begin_of_text|>") == config["bos_token_id"]
    assert tokenizer("reach").input_ids[0] == config["bos_token_id"]
    assert len(tokenizer) == config["vocab_size"] and "<|reserved_special_token_247|>" in tokenizer.get_vocab()
    hub = json.loads((siglip / "config.json").read_text())
    assert hub["architecture"] == SIGLIP_ARCH and hub["model_args"]["embed_dim"] == SIGLIP_SMALL["embed_dim"]
    assert (siglip / "model.safetensors").exists()


def test_pretrained_lora_train_resume_export_eval_serve(fixtures, tmp_path):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from policies.onnx_policy import OnnxPolicy
    from test_server import RunningServer
    from vla.model.vla import VLA

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert vla(recipe(fixtures) + ["--out", str(straight)]) == 0
    assert vla(recipe(fixtures) + ["--out", str(resumed), "--stop-at-step", "2"]) == 0
    assert (resumed / "checkpoints" / "step_000002").is_dir() and not (resumed / "policy").exists()
    assert vla(recipe(fixtures) + ["--out", str(resumed)]) == 0
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-5)

    model = VLA.from_pretrained(straight / "policy")
    assert model.config.lora.rank == 32 and hasattr(model.llama, "peft_config")
    assert_tied(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < sum(p.numel() for p in model.parameters())
    reloaded = VLA.from_pretrained(resumed / "policy")
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    export_dir = tmp_path / "export"
    assert vla(["export", str(straight / "policy"), "--out", str(export_dir)]) == 0
    spec = json.loads((export_dir / "policy.json").read_text())
    assert spec["parity"]["mismatched_tokens"] == 0

    assert vla(["eval", "--policy", str(export_dir), "--episodes", "2", "--env-kw", "image_size=64",
                "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_episodes"] == 2

    running = RunningServer(policy=OnnxPolicy(export_dir, device="cpu"))
    try:
        client = WebsocketClientPolicy(running.url)
        assert client.get_server_metadata()["image_keys"] == ["image"]
        obs = {"image": np.zeros((64, 64, 3), np.uint8), "state": np.zeros(4, np.float32),
               "prompt": "please navigate over to the red cube, which you have never been told about"}
        assert client.infer(obs)["actions"].shape == (spec["chunk_size"], spec["action_dim"])
    finally:
        running.close()


def test_pretrained_lora_on_two_processes_matches_one(fixtures, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    settings = recipe(fixtures, "steps=2")
    assert vla(settings + ["--out", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vla.cli", *settings, "--out", str(two)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((two / "train_summary.json").read_text())["processes"] == 2
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-4)
    from vla.model.vla import VLA

    assert_tied(VLA.from_pretrained(two / "policy"))


def test_qlora_train_resume_export_with_agreement(fixtures, tmp_path):
    """The backbone in 4-bit NF4 (bitsandbytes on the CPU), LoRA adapters on top."""
    from safetensors import safe_open

    from vla.model.vla import VLA

    qlora = ("model.backbone.quantization=nf4",)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert vla(recipe(fixtures, *qlora) + ["--out", str(straight)]) == 0
    assert vla(recipe(fixtures, *qlora) + ["--out", str(resumed), "--stop-at-step", "2"]) == 0
    assert vla(recipe(fixtures, *qlora) + ["--out", str(resumed)]) == 0
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-5)

    saved = json.loads((straight / "policy" / "config.json").read_text())
    assert saved["model"]["backbone"]["quantization"] == "nf4"
    base = saved["meta"]["base"]
    assert Path(base["path"]) == fixtures[1].resolve() and len(base["sha256"]) == 64
    with safe_open(str(straight / "policy" / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert any("lora_A" in k for k in keys)  # the adapters are stored, the 4-bit base weights are not
    assert not any(k.endswith("q_proj.base_layer.weight") or "quant_state" in k or k.endswith(".absmax") for k in keys)
    model = VLA.from_pretrained(straight / "policy")
    assert type(model._llama_base().model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert_tied(model)

    export_dir = tmp_path / "export"
    assert vla(["export", str(straight / "policy"), "--out", str(export_dir)]) == 0
    parity = json.loads((export_dir / "policy.json").read_text())["parity"]
    assert parity["mismatched_tokens"] == 0
    assert parity["quantized_agreement"] >= 0.99, parity  # the NF4 model as trained vs the merged float graph


def test_a_quantized_checkpoint_refuses_a_changed_base(fixtures, tmp_path):
    import shutil

    from vla.errors import CheckpointError
    from vla.model.vla import VLA

    root, llama, siglip = fixtures
    base = tmp_path / "base"
    shutil.copytree(llama, base)
    run = tmp_path / "run"
    settings = recipe((root, base, siglip), "model.backbone.quantization=nf4", "steps=1")
    assert vla(settings + ["--out", str(run)]) == 0
    from safetensors.torch import load_file, save_file

    weights = load_file(str(base / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1.0
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="changed since training"):
        VLA.from_pretrained(run / "policy")


def test_the_prompt_is_built_with_the_backbones_own_tokenizer(fixtures, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from policies.preprocess import PROMPT_TEMPLATE, PromptTokenizer
    from vla.model.text import special_ids

    _, llama, _ = fixtures
    AutoTokenizer.from_pretrained(llama).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))  # as training does
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    bos, pad = special_ids(tokenizer)
    assert tokenizer.id_to_token(bos) == "<|begin_of_text|>" and tokenizer.id_to_token(pad) == "<|finetune_right_pad_id|>"
    prompts = PromptTokenizer(tmp_path / "tokenizer.json", max_tokens=64, pad_id=pad)
    unseen = "carefully nudge the violet teapot toward the windowsill"  # no word of it in any demonstration
    ids, mask = prompts(unseen)
    used = ids[mask.astype(bool)].tolist()
    assert bos not in used  # the model puts <|begin_of_text|> in front of the image tokens itself
    assert tokenizer.decode(used) == PROMPT_TEMPLATE.format(instruction=unseen)  # OpenVLA's prompt, no chat template
