"""The held-out phrasings stay held out: no demonstration, recipe or package file says them."""

from pathlib import Path

from heldout_phrasings import PHRASING_SETS, heldout_rephraser

import sims

ROOT = Path(__file__).resolve().parents[1]


def test_no_heldout_phrasing_is_demonstrated_or_written_in_the_package():
    package_text = "\n".join(path.read_text().lower() for folder in ("sims", "vla", "policies", "configs")
                             for path in sorted((ROOT / folder).rglob("*")) if path.suffix in (".py", ".yaml", ".json"))
    demonstrated = {p for task in sims.TASKS.values() for p in task.phrasings}
    taught = {word for phrasing in demonstrated for word in phrasing.split()}
    for number, phrasings in PHRASING_SETS.items():
        assert set(phrasings) == set(sims.TASKS), f"set {number} covers every built-in task"
        for held_out in phrasings.values():
            assert not set(held_out) & demonstrated
            for phrasing in held_out:
                for part in phrasing.split("{color}"):  # each part with a word no demonstration says
                    if len(part.split()) >= 3 and set(part.split()) - taught:
                        assert part.strip() not in package_text, (number, phrasing)


def test_the_rephraser_cycles_through_a_set_and_names_the_same_colour():
    rephrase = heldout_rephraser("lift", phrasing_set=2)
    said = [rephrase("lift the red cube", "red", episode) for episode in range(8)]
    assert said[:4] == [p.format(color="red") for p in PHRASING_SETS[2]["lift"]] and said[4:] == said[:4]
