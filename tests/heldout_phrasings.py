"""Phrasings of the built-in tasks that no demonstration, recipe or normalization table uses.

They live here, in the tests, so that nothing the policy is trained on can contain them; the tests and
benchmarks/phrasings.py evaluate them beside the phrasings the demonstrations use (sims/tasks.py).
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


def heldout_rephraser(task: str):
    """rephrase(instruction, target, episode) -> a held-out phrasing naming the same target, cycling."""
    phrasings = HELDOUT_PHRASINGS[task]

    def rephrase(instruction: str, target: str, episode: int) -> str:
        return phrasings[episode % len(phrasings)].format(color=target)

    return rephrase
