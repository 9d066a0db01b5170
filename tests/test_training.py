import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from helpers import TINY_OVERRIDES, observation
from vla.cli import main
from vla.data.collect import collect
from vla.errors import ConfigError, DatasetError
from vla.training.config import load_train_config
from vla.training.loop import train


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reach.hdf5"
    collect("sims/Reach-v0", episodes=12, out=path, seed=0, progress=False, noise=0.1,
            env_kwargs={"image_size": 32, "layout": "slots"})
    return path


def recipe(tmp_path, demos, **extra) -> str:
    data = {
        "model_preset": "tiny",
        "model": TINY_OVERRIDES,
        "data": {"paths": [str(demos)], "augment_shift": 2},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "steps": 8,
        "batch_size": 8,
        "log_every": 1,
        "checkpoint_every": 4,
        "deterministic": True,
        "seed": 3,
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in metrics(run_dir) if "loss" in r]


def test_training_writes_config_metrics_checkpoints_and_policy(tmp_path, demos):
    summary = train(load_train_config(recipe(tmp_path, demos)), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert summary["steps"] == 8 and len(losses(run)) == 8
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["vision"]["image_size"] == 32
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000004", "step_000008"]
    assert (run / "policy" / "model.safetensors").exists() and any((run / "tb").iterdir())
    assert np.isfinite(losses(run)).all() and losses(run)[-1] < losses(run)[0]


def test_evaluation_runs_every_eval_every_steps_off_the_checkpoint_schedule(tmp_path, demos):
    evaluated = []

    def evaluate_fn(checkpoint, step):
        assert (checkpoint / "model.safetensors").exists()
        evaluated.append(step)
        return {"success_rate": 0.5}

    config = load_train_config(recipe(tmp_path, demos), ["checkpoint_every=4", "eval.every=3"])
    train(config, tmp_path / "run", progress=False, evaluate_fn=evaluate_fn)
    assert evaluated == [3, 6, 8]
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "eval_success_rate" in r] == [3, 6, 8]


def test_a_run_resumes_from_a_checkpoint_written_before_a_model_key_existed(tmp_path, demos):
    import torch

    config = load_train_config(recipe(tmp_path, demos))
    assert train(config, tmp_path / "run", progress=False, stop_at_step=4) == {"stopped_at": 4}
    state_file = tmp_path / "run" / "checkpoints" / "step_000004" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    del state["config"]["model"]["prefix_actions"]  # as a checkpoint of an older version has it
    state["config"]["model"]["vision_per_camera"] = False  # the default before it changed; one camera: no matter
    torch.save(state, state_file)
    assert train(config, tmp_path / "run", progress=False)["resumed_from"] == 4
    changed = load_train_config(recipe(tmp_path, demos), ["model.chunk_size=3"])
    with pytest.raises(ConfigError, match="chunk_size"):
        train(changed, tmp_path / "run", progress=False)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, demos, lora_rank):
    config = load_train_config(recipe(tmp_path, demos), [f"model.lora.rank={lora_rank}"])
    train(config, tmp_path / "straight", progress=False)
    assert train(config, tmp_path / "resumed", progress=False, stop_at_step=4) == {"stopped_at": 4}
    assert len(losses(tmp_path / "resumed")) == 4
    summary = train(config, tmp_path / "resumed", progress=False)
    assert summary["resumed_from"] == 4
    np.testing.assert_allclose(losses(tmp_path / "resumed"), losses(tmp_path / "straight"), rtol=1e-5)
    # the clock goes on from the checkpoint: training time counts both sessions
    clock = [r["elapsed_s"] for r in metrics(tmp_path / "resumed") if "elapsed_s" in r]
    assert clock == sorted(clock) and summary["train_wall_s"] >= clock[-1] > clock[3] > 0
    a = load_file(tmp_path / "straight" / "policy" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "policy" / "model.safetensors")
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6)


def test_resuming_with_a_changed_model_is_refused(tmp_path, demos):
    config = load_train_config(recipe(tmp_path, demos))
    train(config, tmp_path / "run", progress=False, stop_at_step=4)
    changed = load_train_config(recipe(tmp_path, demos), ["model.backbone.layers=3", "model.chunk_size=3"])
    with pytest.raises(ConfigError, match="backbone.layers: 2 -> 3.*chunk_size: 2 -> 3"):
        train(changed, tmp_path / "run", progress=False)


def test_bad_inputs_fail_before_training(tmp_path, demos):
    with pytest.raises(ConfigError, match="unknown config key 'model.hiden'"):
        load_train_config(recipe(tmp_path, demos), ["model.hiden=3"])
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        load_train_config(recipe(tmp_path, demos), ["optim.lrr=3"])
    with pytest.raises(DatasetError, match="actions have 4 dimensions but model.action_dim is 3"):
        train(load_train_config(recipe(tmp_path, demos), ["model.action_dim=3"]), tmp_path / "a", progress=False)
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("data")
    with pytest.raises(DatasetError, match="holds no episodes"):
        train(load_train_config(recipe(tmp_path, empty)), tmp_path / "b", progress=False)
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_cli_train_and_eval_a_checkpoint(tmp_path, demos, capsys):
    assert main(["train", "--config", recipe(tmp_path, demos), "--set", "steps=4", "--out", str(tmp_path / "run")]) == 0
    assert main(["eval", "--policy", str(tmp_path / "run"), "--episodes", "3", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["num_episodes"] == 3 and len(result["episodes"]) == 3
    assert result["env_id"] == "sims/Reach-v0" and result["env_kwargs"]["image_size"] == 32
    assert 0.0 <= result["ci95"][0] <= result["success_rate"] <= result["ci95"][1] <= 1.0
    assert {e["seed"] for e in result["episodes"]} == {100000, 100001, 100002}  # away from the demo seeds
    assert any(p.suffix == ".mp4" for p in (tmp_path / "eval").iterdir())


def _train_cli(config: str, out, processes: int) -> dict:
    """`vla train` in 1 process, or in several through torchrun (not `accelerate launch --cpu`, which
    starts a single process unless MPI is installed)."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    run = subprocess.run([*launcher, "-m", "vla.cli", "train", "--config", config, "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # The failing rank's traceback comes first; torchrun's summary of it last.
    assert run.returncode == 0, run.stderr[:4000] + "\n...\n" + run.stderr[-1500:]
    return json.loads((out / "train_summary.json").read_text())


def _assert_same_weights(a_dir, b_dir):
    a = load_file(a_dir / "policy" / "model.safetensors")
    b = load_file(b_dir / "policy" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_two_processes_match_one_and_resume_its_checkpoint(tmp_path, demos):
    # FiLM on (its input norm all-reduces the batch statistics), and a tied head, as Llama 3.2 has.
    config = recipe(tmp_path, demos, steps=6, checkpoint_every=3, keep_checkpoints=3,
                    model={**TINY_OVERRIDES, "film": True, "backbone": {**TINY_OVERRIDES["backbone"],
                                                                         "tie_embeddings": True}})
    assert _train_cli(config, tmp_path / "one", processes=1)["processes"] == 1
    assert _train_cli(config, tmp_path / "two", processes=2)["processes"] == 2
    _assert_same_weights(tmp_path / "one", tmp_path / "two")
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-4)

    # A one-process run interrupted at step 3, resumed on two processes, ends where the straight run does.
    shutil.copytree(tmp_path / "one", tmp_path / "moved")
    shutil.rmtree(tmp_path / "moved" / "checkpoints" / "step_000006")
    shutil.rmtree(tmp_path / "moved" / "policy")
    summary = _train_cli(config, tmp_path / "moved", processes=2)
    assert summary["resumed_from"] == 3 and summary["processes"] == 2
    _assert_same_weights(tmp_path / "one", tmp_path / "moved")
    np.testing.assert_allclose(losses(tmp_path / "moved"), losses(tmp_path / "one"), rtol=1e-4)


ROOT = Path(__file__).resolve().parents[1]


def _launch_environment(config_name: str) -> dict:
    """The environment `accelerate launch --config_file configs/accelerate/<name>.yaml` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "configs/accelerate" / config_name), "x.py"])
    return prepare_multi_gpu_env(_validate_launch_command(args)[0])


def test_ddp_accelerate_config_launches_one_process_per_gpu():
    env = _launch_environment("ddp.yaml")
    assert env.get("ACCELERATE_USE_FSDP", "false") == "false" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp2_sharded_training_checkpoints_and_resumes(tmp_path):
    """accelerate's FSDP2 wrapping with configs/accelerate/fsdp.yaml, on 2 CPU processes (tests/fsdp_worker.py)."""
    from vla.model.vla import VLA

    env = _launch_environment("fsdp.yaml")
    assert env["FSDP_VERSION"] == "2" and env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer,Block"
    env.update(OMP_NUM_THREADS="1", ACCELERATE_MIXED_PRECISION="no")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "tests" / "fsdp_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    np.testing.assert_allclose(result["sharded_losses"], result["reference_losses"], rtol=1e-5)
    # Adam turns float noise in near-zero gradients (the zero-initialised FiLM layers') into visible weight
    # differences: 6e-5 after 5 steps at lr 1e-3, where the losses agree to 1e-5.
    assert result["sharded_vs_reference"][0] < 2e-4, result["sharded_vs_reference"]
    np.testing.assert_allclose(result["resumed_losses"], result["sharded_losses"][3:], rtol=1e-6)
    assert result["resumed_vs_sharded"][0] < 1e-6, result["resumed_vs_sharded"]
    assert result["gathered_keys_match_plain_model"]
    # The checkpoint written from the sharded model is a plain policy directory.
    policy = VLA.from_pretrained(tmp_path / "run" / "checkpoints" / "step_000003")
    assert policy.predict_action(observation()).shape == (policy.config.chunk_size, policy.config.action_dim)


def test_deepspeed_is_refused_with_a_pointer_to_fsdp(tmp_path, demos, monkeypatch):
    from accelerate.utils import DistributedType

    import vla.training.loop as loop

    class DeepSpeedAccelerator:  # accelerate runs DeepSpeed on GPUs only; this stands in for one
        distributed_type = DistributedType.DEEPSPEED

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(loop, "Accelerator", DeepSpeedAccelerator)
    with pytest.raises(ConfigError, match="configs/accelerate/fsdp.yaml"):
        train(load_train_config(recipe(tmp_path, demos)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_lazy_frames_and_dataloader_workers_train_exactly_as_frames_in_memory(tmp_path, demos):
    runs = {}
    for name, settings in (("memory", ["data.frames=memory"]), ("lazy", ["data.frames=lazy"]),
                           ("workers", ["data.frames=lazy", "data.workers=2"])):
        config = load_train_config(recipe(tmp_path, demos), [*settings, "steps=4"])
        train(config, tmp_path / name, progress=False)
        runs[name] = losses(tmp_path / name)
    np.testing.assert_allclose(runs["lazy"], runs["memory"], rtol=1e-6)
    np.testing.assert_allclose(runs["workers"], runs["memory"], rtol=1e-6)
    with pytest.raises(DatasetError, match="data.frames must be one of lazy, memory"):
        train(load_train_config(recipe(tmp_path, demos), ["data.frames=mmap"]), tmp_path / "bad", progress=False)


@pytest.mark.slow  # compiling takes most of a minute
def test_a_compiled_model_trains_as_the_plain_one_and_saves_the_same_checkpoint(tmp_path, demos):
    from vla.model.vla import VLA

    for name, compiled in (("plain", "false"), ("compiled", "true")):
        train(load_train_config(recipe(tmp_path, demos), [f"compile={compiled}", "steps=4", "checkpoint_every=2",
                                                          "data.val_episodes=2", "eval.val_every=2"]),
              tmp_path / name, progress=False)
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "plain"), rtol=1e-4)
    plain = load_file(tmp_path / "plain" / "policy" / "model.safetensors")
    compiled = load_file(tmp_path / "compiled" / "policy" / "model.safetensors")
    assert sorted(compiled) == sorted(plain)  # no torch.compile wrapper in the parameter names
    for key, value in plain.items():
        np.testing.assert_allclose(compiled[key].numpy(), value.numpy(), atol=1e-4, err_msg=key)
    VLA.from_pretrained(tmp_path / "compiled" / "policy")


def test_a_validation_split_holds_out_episodes_and_logs_their_loss(tmp_path, demos):
    from vla.data.dataset import validation_split

    train_eps, held = validation_split(12, 0.25, seed=3)
    assert len(held) == 3 and not set(held) & set(train_eps) and len(train_eps) == 9
    assert validation_split(12, 2, seed=3)[1] == validation_split(12, 2, seed=3)[1]  # a count; repeatable
    config = load_train_config(recipe(tmp_path, demos), ["data.val_episodes=0.25", "eval.val_every=4"])
    train(config, tmp_path / "run", progress=False)
    rows = metrics(tmp_path / "run")
    validated = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in validated] == [4, 8] and all(np.isfinite(r["val_loss"]) for r in validated)
    meta = json.loads((tmp_path / "run" / "policy" / "config.json").read_text())["meta"]
    assert meta["validation_episodes"] == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert "val_loss" in events.Tags()["scalars"]


def test_instruction_noise_swaps_in_random_words_repeatably(tmp_path, demos):
    from vla.data.dataset import noisy_instruction

    assert noisy_instruction("reach the red cube", 7) == noisy_instruction("reach the red cube", 7)
    variants = {noisy_instruction("reach the red cube", seed) for seed in range(20)}
    assert len(variants) > 10 and "reach the red cube" in {noisy_instruction("reach the red cube", s, 0.0, 0)
                                                            for s in range(3)}
    config = load_train_config(recipe(tmp_path, demos), ["data.instruction_noise=0.5", "steps=3"])
    train(config, tmp_path / "a", progress=False)
    train(config, tmp_path / "b", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "a"), losses(tmp_path / "b"), rtol=1e-6)  # a function of the step


def test_instruction_dropout_leaves_out_words_but_never_the_target_or_all_of_them(tmp_path, demos):
    import torch

    from vla.data.dataset import dropped_words
    from vla.training.loop import prepare

    said = "go to the red cube and stop above it"
    variants = [dropped_words(said, seed, keep="red") for seed in range(200)]
    assert variants[7] == dropped_words(said, 7, keep="red")  # a function of the seed
    assert all("red" in v.split() and len(v.split()) < len(said.split()) or v == said for v in variants)
    assert all(set(v.split()) <= set(said.split()) for v in variants) and len(set(variants)) > 50
    assert said in variants  # a quarter of the words is the rate: some samples lose none
    assert all(dropped_words("reach", seed, rate=1.0) == "reach" for seed in range(5))  # never all of them
    assert dropped_words(said, 3, keep="red", rate=1.0) == "red"

    config = load_train_config(recipe(tmp_path, demos), ["data.instruction_dropout=1.0", "steps=2"])
    (tmp_path / "run").mkdir()
    dataset = prepare(config, tmp_path / "run").dataset
    indices, seeds = torch.arange(8), torch.arange(8)
    plain, dropped = dataset.batch(indices), dataset.batch(indices, dropout_seeds=seeds)
    for row in range(8):
        episode = int(dataset.episode[row])
        instruction = dropped_words(dataset.instructions[episode], row, keep=dataset.targets[episode])
        ids, mask = dataset.prompts(instruction)
        got = dropped.prompt_ids[row][dropped.prompt_mask[row].bool()]
        assert got.tolist() == ids[mask.astype(bool)].tolist()
    assert plain.prompt_mask.sum() > dropped.prompt_mask.sum()  # shorter prompts: no throughput spent
    train(config, tmp_path / "a", progress=False)
    train(config, tmp_path / "b", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "a"), losses(tmp_path / "b"), rtol=1e-6)  # a function of the step


def test_instruction_noise_cut_to_fit_says_nothing_but_a_real_instruction_does(tmp_path, demos, recwarn):
    from policies.preprocess import PromptTokenizer
    from vla.data.dataset import noisy_instruction
    from vla.policy import load_policy

    # Room for the demonstrations' prompts (up to 39 tokens with this small BPE), not for many noisy ones:
    # the BPE cuts random letters fine.
    room = 40
    config = load_train_config(recipe(tmp_path, demos), ["data.instruction_noise=1.0", "steps=2",
                                                         f"model.max_prompt_tokens={room}"])
    train(config, tmp_path / "run", progress=False)
    assert not [w for w in recwarn if "the prompt for" in str(w.message)]

    model = load_policy(tmp_path / "run").model
    prompts = PromptTokenizer(model.text_tokenizer_file, room, model.pad_id)
    noisy = (noisy_instruction("go to the red cube and stop above it", seed) for seed in range(20))
    too_long = [text for text in noisy if len(prompts.token_ids(text)) > room]
    assert too_long  # the noise did need cutting during training
    with pytest.warns(UserWarning, match="the prompt for"):
        prompts(too_long[0])


def test_a_word_tokenizer_reads_every_unseen_word_as_one_unknown(tmp_path, demos):
    from policies.preprocess import PromptTokenizer
    from vla.policy import load_policy

    config = load_train_config(recipe(tmp_path, demos), ["model.text_tokenizer=words", "data.instruction_noise=0.5",
                                                         "steps=2"])
    train(config, tmp_path / "run", progress=False)
    policy = load_policy(tmp_path / "run")
    prompts = PromptTokenizer(policy.model.text_tokenizer_file, 32, policy.model.pad_id)  # the deploy side's reader
    unk = prompts.tokenizer.token_to_id("<unk>")
    known, unseen = prompts.token_ids("reach the red cube"), prompts.token_ids("approach the red cube")
    assert unk not in known and len(unseen) == len(known) and unseen.count(unk) == 1
    assert prompts.token_ids("shove the red cube") == unseen  # one unknown word reads as any other
    np.testing.assert_array_equal(policy.act(observation(prompt="shove the red cube")),
                                  policy.act(observation(prompt="approach the red cube")))
    assert prompts.tokenizer.get_vocab_size() < 40  # the instructions' words, the template's and 4 specials

    with pytest.raises(ConfigError, match="text_tokenizer"):
        load_train_config(recipe(tmp_path, demos), ["model.text_tokenizer=chars"])


@pytest.mark.parametrize("name", sorted(path.stem for path in (ROOT / "configs/train").glob("*.yaml")))
def test_every_shipped_recipe_loads_with_its_model_preset(name):
    config = load_train_config(name)  # unknown keys and invalid choices raise ConfigError
    assert config.data.paths and config.steps >= 1
    assert config.model.chunk_size >= 1
