"""Phrasings of the built-in tasks that no demonstration, recipe or normalization table uses.

They live here, in the tests, so that nothing the policy is trained on can contain them; the tests and
benchmarks/phrasings.py evaluate them beside the phrasings the demonstrations use (sims/tasks.py).

HELDOUT_PHRASINGS (set 1) has been run through policies since 2026-12-03, and what went wrong on it shaped later
work (the lexicon, instruction noise). LATER_PHRASINGS (set 2) was written on 2026-12-07, before the lexicon's
parts of speech were designed, and committed before any policy read it; none of the lexicon tests'
development words (tests/test_lexicon.py) is in it. Its figures are the unbiased ones for everything designed
after set 1 was seen. THIRD_PHRASINGS (set 3) was written on 2026-12-07 after sets 1 and 2 had been run (so its
author knew that two-clause instructions were what failed), and committed before the demonstrations' phrasings were
widened and before any policy read it: its figures are the unbiased ones for that widening. FOURTH_PHRASINGS (set 4)
was written on 2026-12-07 after set 3 had been run through the widened demonstrations' policy (where Lift's "hold"
read as Push's "keep") and committed before the demonstrations' phrasings were mended for it: its figures are the
unbiased ones for that mend. FIFTH_PHRASINGS (set 5) was written on 2026-12-07 after set 4 had been run through the
9,000-step recipe (where PickPlace's "carry ... over to the white circle and leave it there" read as a hover) and
committed before any mend for it (in the lexicon, the demonstrations or the training) was written or any policy read
it: its figures are the unbiased ones for such a mend.
"""

HELDOUT_PHRASINGS = {
    "reach": (
        "navigate to the {color} cube",
        "position the gripper above the {color} block",
        "please approach the {color} cube",
        "bring your hand over the {color} cube and stay there",
    ),
    "push": (
        "shove the {color} cube into the white circle",
        "nudge the {color} block onto the white target",
        "please push the {color} cube until it is inside the white zone",
    ),
    "lift": (
        "raise the {color} cube",
        "grab the {color} block and hold it up",
        "please pick the {color} cube up off the table",
    ),
    "pick_place": (
        "carry the {color} cube to the white circle",
        "drop the {color} block onto the white zone",
        "please take the {color} cube and set it down in the white target",
    ),
}


LATER_PHRASINGS = {
    "reach": (
        "put the gripper right above the {color} cube",
        "head over to the {color} block",
        "get close to the {color} cube",
        "can you reach for the {color} block",
    ),
    "push": (
        "move the {color} cube into the white area by pushing it",
        "drive the {color} block into the white spot",
        "shift the {color} cube to the white patch",
        "push the {color} block along the table into the white region",
    ),
    "lift": (
        "get the {color} block up in the air",
        "hold the {color} cube above the table",
        "take hold of the {color} block and raise it",
        "pick up the {color} cube and keep it in the air",
    ),
    "pick_place": (
        "transfer the {color} block to the white area",
        "place the {color} cube on the white spot",
        "move the {color} cube over to the white region and release it",
        "pick the {color} block up and put it down on the white patch",
    ),
}

THIRD_PHRASINGS = {
    "reach": (
        "bring the gripper to the {color} block",
        "find the {color} cube and move above it",
        "could you go over to the {color} cube",
        "approach the {color} block and wait there",
    ),
    "push": (
        "push the {color} block over to the white circle",
        "get the {color} cube into the white area by sliding it",
        "use the gripper to shove the {color} block into the white zone",
        "without lifting it, move the {color} cube onto the white circle",
    ),
    "lift": (
        "pick the {color} cube up",
        "lift up the {color} block",
        "grab the {color} cube and raise it off the table",
        "take the {color} block and hold it high",
    ),
    "pick_place": (
        "pick up the {color} cube and drop it in the white circle",
        "grab the {color} block and set it on the white zone",
        "put the {color} cube down inside the white area",
        "lift the {color} block and place it on the white target",
    ),
}

FOURTH_PHRASINGS = {
    "reach": (
        "move close to the {color} cube",
        "please hover near the {color} block",
        "bring the hand right over the {color} block",
        "i want the gripper above the {color} cube",
    ),
    "push": (
        "push the {color} cube across to the white circle",
        "slide the {color} block until it sits in the white zone",
        "gently push the {color} cube toward the white target until it is inside",
        "move the {color} block into the white circle, keeping it on the table",
    ),
    "lift": (
        "lift the {color} block into the air",
        "pick up the {color} cube and hold it up there",
        "get a grip on the {color} block and lift it",
        "raise the {color} cube off the table",
    ),
    "pick_place": (
        "put the {color} block onto the white target",
        "pick the {color} cube up and put it in the white zone",
        "carry the {color} block over to the white circle and leave it there",
        "bring the {color} cube to the white area and let it go",
    ),
}

FIFTH_PHRASINGS = {
    "reach": (
        "steer the gripper to the {color} cube",
        "go up to the {color} block and stay above it",
        "could you move over to the {color} block",
        "put your gripper near the {color} cube",
    ),
    "push": (
        "push the {color} block so it ends up on the white circle",
        "slide the {color} cube over to the white target",
        "nudge the {color} block along the table into the white area",
        "keep the {color} cube on the table and push it into the white zone",
    ),
    "lift": (
        "lift the {color} cube up high",
        "grab hold of the {color} block and pick it up",
        "take the {color} cube off the table",
        "raise the {color} block and keep holding it",
    ),
    "pick_place": (
        "put the {color} cube into the white zone",
        "pick up the {color} block and set it on the white circle",
        "move the {color} cube over to the white target and drop it there",
        "grab the {color} block, carry it to the white area and let go",
    ),
}

PHRASING_SETS = {1: HELDOUT_PHRASINGS, 2: LATER_PHRASINGS, 3: THIRD_PHRASINGS, 4: FOURTH_PHRASINGS,
                 5: FIFTH_PHRASINGS}


def heldout_rephraser(task: str, phrasing_set: int = 1):
    """rephrase(instruction, target, episode) -> a held-out phrasing naming the same target, cycling."""
    phrasings = PHRASING_SETS[phrasing_set][task]

    def rephrase(instruction: str, target: str, episode: int) -> str:
        return phrasings[episode % len(phrasings)].format(color=target)

    return rephrase
