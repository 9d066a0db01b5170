import json
import shutil

import numpy as np
import pytest
import torch

from helpers import fake_norm_stats, make_model, observation, sharpen, write_tokenizer
from policies.actions import ActionTokenizer, action_statistics
from policies.preprocess import trim_prompt_padding
from vla.model.checkpoint import observation_encoder
from vla.errors import CheckpointError
from vla.model.vla import VLA, Batch

# ---------------------------------------------------------------- action tokenizer


def test_action_tokenizer_round_trip_is_within_half_a_bin():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.8, 0.8, (1000, 3))
    tokenizer = ActionTokenizer(action_statistics(actions), vocab_size=1000, n_bins=256)
    inside = np.clip(actions, tokenizer.low, tokenizer.high)
    decoded = tokenizer.decode(tokenizer.encode(actions))
    assert np.all(np.abs(decoded - inside) <= tokenizer.bin_width / 2 + 1e-6)


def test_action_ids_are_reserved_at_the_end_of_the_vocabulary_and_clip():
    rng = np.random.default_rng(1)
    stats = action_statistics(rng.normal(size=(500, 2)))
    tokenizer = ActionTokenizer(stats, vocab_size=700, n_bins=256)
    ids = tokenizer.encode(rng.normal(size=(100, 2)) * 10)  # far out of range
    assert ids.min() >= 700 - 256 and ids.max() < 700
    far = tokenizer.decode(tokenizer.encode(np.array([[1e6, -1e6]])))
    np.testing.assert_allclose(far[0], [tokenizer.high[0] - tokenizer.bin_width[0] / 2,
                                        tokenizer.low[1] + tokenizer.bin_width[1] / 2], rtol=1e-5)


def test_constant_dimension_passes_through_and_binary_stays_binary():
    rng = np.random.default_rng(2)
    actions = np.stack([rng.uniform(-1, 1, 400), np.full(400, 0.25), np.where(rng.random(400) < 0.004, 1.0, -1.0)], 1)
    actions[0, 2] = 1.0  # rare closings: quantiles would call this dimension constant
    tokenizer = ActionTokenizer(action_statistics(actions), vocab_size=512, n_bins=256)
    decoded = tokenizer.decode(tokenizer.encode(actions))
    assert np.all(decoded[:, 1] == np.float32(0.25))
    assert set(np.unique(decoded[:, 2])) == {-1.0, 1.0}
    np.testing.assert_array_equal(decoded[:, 2], actions[:, 2])


def test_action_tokenizer_refuses_wrong_dimension():
    tokenizer = ActionTokenizer(action_statistics(np.zeros((10, 3)) + np.arange(10)[:, None]), 512)
    with pytest.raises(ValueError, match="3 dimensions"):
        tokenizer.encode(np.zeros((5, 4)))


# ---------------------------------------------------------------- model shapes and decoding


@pytest.mark.parametrize("fusion", ["prefix", "cross_attention"])
@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_output_shapes(tmp_path, fusion, decoding):
    model = make_model(tmp_path, fusion=fusion, decoding=decoding, film=fusion == "prefix")
    k, d = model.config.chunk_size, model.config.action_dim
    batch = model.prepare([observation(0), observation(1, size=64, prompt="pick up the green cube")])
    batch.action_ids = torch.from_numpy(model.action_tokenizer.encode(np.zeros((2, k, d))).reshape(2, -1))
    out = model(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["predicted_ids"].shape == (2, k * d)
    ids = model.predict_action_ids(batch)
    assert ids.shape == (2, k * d)
    assert ids.min() >= model.vocab_size - 256 and ids.max() < model.vocab_size
    assert model.predict_action(observation(2)).shape == (k, d)
    assert model.predict_action([observation(2), observation(3)]).shape == (2, k, d)


def test_loss_counts_only_action_tokens_and_ignores_padding(tmp_path):
    model = make_model(tmp_path)
    batch = model.prepare([observation(0)])
    ids = torch.from_numpy(model.action_tokenizer.encode(np.zeros((1, 2, 4))).reshape(1, -1))
    batch.action_ids = ids
    full = model(batch)["loss"]
    batch.action_ids = ids.clone()
    batch.action_ids[:, 4:] = -100
    half = model(batch)["loss"]
    assert 0 < half < full


def test_trim_prompt_padding_drops_only_columns_that_are_padding_in_every_row():
    mask = np.array([[0, 0, 1, 1], [0, 0, 0, 1]])
    ids = np.arange(8).reshape(2, 4)
    trimmed_ids, trimmed_mask = trim_prompt_padding(ids, mask)
    np.testing.assert_array_equal(trimmed_mask, [[1, 1], [0, 1]])
    np.testing.assert_array_equal(trimmed_ids, [[2, 3], [6, 7]])
    t_ids, t_mask = trim_prompt_padding(torch.from_numpy(ids), torch.from_numpy(mask))
    assert torch.equal(t_mask, torch.tensor([[1, 1], [0, 1]]))
    assert trim_prompt_padding(ids, np.zeros_like(mask))[1].shape == (2, 1)  # never empty


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_prompt_padding_does_not_change_actions(tmp_path, decoding):
    model = make_model(tmp_path, decoding=decoding)
    sharpen(model)
    observations = [observation(0, prompt="reach the red cube"), observation(1, prompt="move to the blue block")]
    trimmed = model.prepare(observations)  # as policies run: columns of padding only are dropped
    full = model.prepare(observations)
    untrimmed = observation_encoder(model)(observations, trim=False)
    full.prompt_ids, full.prompt_mask = torch.from_numpy(untrimmed["prompt_ids"]), torch.from_numpy(untrimmed["prompt_mask"])
    assert trimmed.prompt_ids.shape[1] < full.prompt_ids.shape[1] == model.config.max_prompt_tokens
    assert not trimmed.prompt_mask.all()  # the shorter prompt keeps some padding
    assert torch.equal(model.predict_action_ids(trimmed), model.predict_action_ids(full))


def test_cross_attention_with_closed_gates_leaves_the_backbone_unchanged(tmp_path):
    from transformers import LlamaForCausalLM

    model = make_model(tmp_path, fusion="cross_attention", film=False)
    llama = model._llama_base()
    plain = LlamaForCausalLM(llama.config).eval()
    state = {k.replace(".layer.", "."): v for k, v in llama.state_dict().items() if ".cross." not in k}
    plain.load_state_dict(state)
    ids = torch.randint(0, 200, (2, 12))
    for layer in model._cross_layers:
        layer.memory = torch.randn(2, 4, llama.config.hidden_size)
    with torch.no_grad():
        ours = llama(input_ids=ids).logits
        theirs = plain(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # Opening a gate makes the image matter.
    with torch.no_grad():
        model._cross_layers[0].cross.attn_gate.fill_(1.0)
        assert not torch.allclose(llama(input_ids=ids).logits, theirs)


@pytest.mark.parametrize("fusion", ["prefix", "cross_attention"])
def test_kv_cache_gives_the_same_tokens_as_recomputing(tmp_path, fusion):
    model = make_model(tmp_path, decoding="autoregressive", fusion=fusion, chunk_size=3)
    sharpen(model)
    batch = model.prepare([observation(0), observation(1, prompt="move to the blue block")])
    cached = model.predict_action_ids(batch, use_cache=True)
    recomputed = model.predict_action_ids(batch, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_parallel_decoding_matches_teacher_forced_argmax(tmp_path):
    model = make_model(tmp_path)
    batch = model.prepare([observation(0)])
    batch.action_ids = torch.full((1, 8), model.vocab_size - 1)
    out = model(batch)
    batch.action_ids = None
    assert torch.equal(out["predicted_ids"], model.predict_action_ids(batch))


# ---------------------------------------------------------------- checkpoints


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    model = make_model(tmp_path, decoding="autoregressive", fusion="cross_attention")
    sharpen(model, 5.0)
    obs = [observation(i) for i in range(3)]
    before = model.predict_action(obs)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"]
    loaded = VLA.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_array_equal(before, loaded.predict_action(obs))


def test_checkpoint_missing_a_file_names_it(tmp_path):
    model = make_model(tmp_path)
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "norm_stats.json").unlink()
    with pytest.raises(CheckpointError, match="norm_stats.json"):
        VLA.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        VLA.from_pretrained(tmp_path / "nowhere")


def test_checkpoint_with_mismatched_weights_is_refused(tmp_path):
    model = make_model(tmp_path)
    model.save_pretrained(tmp_path / "a")
    make_model(tmp_path, decoding="autoregressive").save_pretrained(tmp_path / "b")
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match"):
        VLA.from_pretrained(tmp_path / "a")


def test_pretrained_llama_and_timm_vit_load_from_local_files(tmp_path):
    import timm
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from vla.model.config import load_model_config
    from helpers import TINY_OVERRIDES
    from vla.config import merge

    # A "pretrained" Llama directory with its own tokenizer.json, as a hub snapshot would have.
    llama_dir = tmp_path / "llama"
    tokenizer_path = write_tokenizer(tmp_path)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    llama.save_pretrained(llama_dir)
    shutil.copyfile(tokenizer_path, llama_dir / "tokenizer.json")
    # A timm ViT's weights in a file.
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))

    config = load_model_config("tiny", merge(TINY_OVERRIDES, {
        "backbone": {"pretrained": str(llama_dir)},
        "vision": {"pretrained": str(tmp_path / "vit.safetensors")},
    }))
    model = VLA.create(config, llama_dir / "tokenizer.json", fake_norm_stats())
    torch.testing.assert_close(model.vision.encoders[0].vit.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    base = model._llama_base()
    torch.testing.assert_close(base.model.layers[1].mlp.up_proj.weight, llama.model.layers[1].mlp.up_proj.weight)
    assert base.config.vocab_size == 300 + 256  # action tokens appended after the text vocabulary
    torch.testing.assert_close(base.get_input_embeddings().weight[:300], llama.get_input_embeddings().weight)
    # The checkpoint it saves loads without the original files.
    model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(llama_dir)
    (tmp_path / "vit.safetensors").unlink()
    loaded = VLA.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_array_equal(model.predict_action(observation(0)), loaded.predict_action(observation(0)))


def test_lora_freezes_the_base_and_merges_to_the_same_outputs(tmp_path):
    model = make_model(tmp_path, lora={"rank": 4, "alpha": 8})
    base = model._llama_base()
    q = base.model.layers[0].self_attn.q_proj
    assert not q.base_layer.weight.requires_grad and q.lora_A["default"].weight.requires_grad
    frozen = q.base_layer.weight.clone()
    batch = model.prepare([observation(0), observation(1)])
    batch.action_ids = torch.from_numpy(model.action_tokenizer.encode(np.zeros((2, 2, 4))).reshape(2, -1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        optimizer.step()
    model.eval()
    torch.testing.assert_close(q.base_layer.weight, frozen, rtol=0, atol=0)
    with torch.no_grad():
        before = model.action_logits_for(batch)
        model.merge_lora()
        after = model.action_logits_for(batch)
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model"]["lora"]["rank"] == 0
    VLA.from_pretrained(tmp_path / "merged")


# ---------------------------------------------------------------- bad input


def test_bad_inputs_name_what_was_expected(tmp_path):
    model = make_model(tmp_path)
    good = model.prepare([observation(0)])
    image = good.images["image"]
    with pytest.raises(ValueError, match=r"uint8 \[B=1, 32, 32, 3\]"):
        model.predict_action_ids(Batch({"image": image.float()}, good.prompt_ids, good.prompt_mask, good.state))
    with pytest.raises(ValueError, match=r"uint8 \[B=1, 32, 32, 3\]"):
        model.predict_action_ids(Batch({"image": image[:, :16]}, good.prompt_ids, good.prompt_mask, good.state))
    with pytest.raises(ValueError, match=r"cameras \['image'\]"):
        model.predict_action_ids(Batch({"wrist": image}, good.prompt_ids, good.prompt_mask, good.state))
    with pytest.raises(ValueError, match=r"state must be \[B=1, 4\]"):
        model.predict_action_ids(Batch(good.images, good.prompt_ids, good.prompt_mask, good.state[:, :3]))
    obs = observation(0)
    with pytest.raises(ValueError, match="prompt"):
        model.predict_action({k: v for k, v in obs.items() if k != "prompt"})
    with pytest.raises(ValueError, match="4 values"):
        model.predict_action({**obs, "state": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="uint8"):
        model.predict_action({**obs, "image": obs["image"].astype(np.float32)})


def test_from_scratch_vit_starts_with_sincos_positions_and_pretrained_keeps_its_own(tmp_path):
    model = make_model(tmp_path)
    pos = model.vision.encoders[0].vit.pos_embed[0, 1:]
    assert pos.std() > 0.3  # timm's default would be 0.02
    assert not torch.allclose(pos[0], pos[1])


@pytest.mark.parametrize("aux", ["actions", "target"])
def test_auxiliary_head_adds_its_loss_in_training_only(tmp_path, aux):
    model = make_model(tmp_path, aux_loss=aux, aux_weight=2.0).train()
    batch = model.prepare([observation(0), observation(1)])
    batch.action_ids = torch.from_numpy(model.action_tokenizer.encode(np.zeros((2, 2, 4))).reshape(2, -1))
    width = 8 if aux == "actions" else 3
    batch.aux_target, batch.aux_mask = torch.randn(2, width), torch.ones(2, width)
    out = model(batch)
    assert out["aux_loss"] > 0 and torch.isclose(out["loss"], model(Batch(**{**batch.__dict__, "aux_target": None}))["loss"] + 2.0 * out["aux_loss"])
    out["loss"].backward()
    assert model.aux_head.mlp[-1].weight.grad is not None
    assert model.vision.encoders[0].vit.patch_embed.proj.weight.grad.abs().sum() > 0


def test_film_conditioning_trains_with_a_batch_of_one(tmp_path):
    model = make_model(tmp_path).train()
    batch = model.prepare([observation(0)])
    batch.action_ids = torch.from_numpy(model.action_tokenizer.encode(np.zeros((1, 2, 4))).reshape(1, -1))
    assert torch.isfinite(model(batch)["loss"])


def test_a_committed_action_prefix_is_kept_and_conditions_the_rest_of_the_chunk(tmp_path):
    model = make_model(tmp_path, chunk_size=4, prefix_actions=2)
    sharpen(model, 5.0)
    with torch.no_grad():
        model.prefix_embedding.normal_()  # as if trained
    batch = model.prepare([observation(0), observation(1)])
    free = model.predict_action_ids(batch)
    d = model.config.action_dim
    prefix = torch.full_like(free, -1)
    prefix[0, : 2 * d] = model.vocab_size - 1  # sample 0: two committed actions, all in the top bin
    prefix[1, :d] = model.vocab_size - model.config.n_bins  # sample 1: one, in the bottom bin
    batch.prefix_ids = prefix
    given = model.predict_action_ids(batch)
    assert torch.equal(given[0, : 2 * d], prefix[0, : 2 * d]) and torch.equal(given[1, :d], prefix[1, :d])
    assert not torch.equal(given[:, 2 * d :], free[:, 2 * d :])  # the rest is predicted given the prefix
    # In training the given positions carry no loss: changing their labels changes nothing.
    batch.action_ids = free.clone()
    loss = model(batch)["loss"]
    batch.action_ids[0, : 2 * d] = model.vocab_size - model.config.n_bins
    assert torch.equal(model(batch)["loss"], loss)
    with pytest.raises(ValueError, match="prefix_ids must be"):
        model.predict_action_ids(Batch(batch.images, batch.prompt_ids, batch.prompt_mask, batch.state,
                                       prefix_ids=prefix[:, :3]))


def test_prefix_actions_needs_parallel_decoding_and_room_in_the_chunk(tmp_path):
    from vla.errors import ConfigError

    with pytest.raises(ConfigError, match="parallel"):
        make_model(tmp_path, chunk_size=4, prefix_actions=2, decoding="autoregressive")
    with pytest.raises(ConfigError, match="chunk_size - 1"):
        make_model(tmp_path, chunk_size=2, prefix_actions=2)
    plain = make_model(tmp_path)
    batch = plain.prepare([observation(0)])
    batch.prefix_ids = torch.full((1, plain.config.action_tokens), -1)
    with pytest.raises(ValueError, match="not trained with an action prefix"):
        plain.predict_action_ids(batch)


@pytest.mark.parametrize("per_camera", [False, True])
def test_two_cameras_share_a_vit_or_have_one_each_and_round_trip(tmp_path, per_camera):
    from vla.export import export

    model = make_model(tmp_path, image_keys=["image", "wrist_image"], vision_per_camera=per_camera)
    (tmp_path / "one").mkdir()
    one = make_model(tmp_path / "one", image_keys=["image"])
    vit = sum(p.numel() for p in one.vision.encoders.parameters())
    assert sum(p.numel() for p in model.vision.encoders.parameters()) == vit * (2 if per_camera else 1)
    sharpen(model, 5.0)
    rng = np.random.default_rng(0)
    obs = [{**observation(i), "wrist_image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)} for i in range(3)]
    tokens = model.encode_images(model.prepare(obs))
    assert tokens.shape == (3, 2 * model.vision.num_tokens, model.config.backbone.hidden_size)
    before = model.predict_action(obs)
    model.save_pretrained(tmp_path / "ckpt")
    np.testing.assert_array_equal(before, VLA.from_pretrained(tmp_path / "ckpt").predict_action(obs))
    meta = export(tmp_path / "ckpt", tmp_path / "onnx", parity_inputs=8)
    assert meta["parity"]["mismatched_tokens"] == 0 and meta["image_keys"] == ["image", "wrist_image"]
