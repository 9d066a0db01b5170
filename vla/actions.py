"""The action tokenizer, under the name the design gives it (`vla.actions.ActionTokenizer`).

It is written in numpy and lives in `policies.actions`, because the deployed policy decodes action
tokens on a robot computer that has no torch; training and export use the very same class.
"""

from policies.actions import ActionTokenizer, action_statistics

__all__ = ["ActionTokenizer", "action_statistics"]
