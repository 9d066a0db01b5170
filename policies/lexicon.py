"""Instructions rewritten into the words a policy was taught, before tokenization.

A policy trained from scratch knows only the words of its demonstrations' instructions: "transport the red
cube to the white circle" means nothing to it if "transport" was never said. A lexicon (`lexicon.json`,
beside `tokenizer.json` in a checkpoint or an export, made by `vla lexicon` from WordNet) maps each other
English word to a taught word it is a kind of ("carry" is a kind of "move", "shove" of "push", "raise" is
a synonym of "lift"), or to nothing. With one, every word of an instruction becomes a taught word or is
left out, and what was replaced or left out is said once per instruction. Without one, instructions are
tokenized as they are.

A word's role in the instruction decides which table reads it (`roles`): the verb of an imperative and the
head noun of a noun phrase are read only as taught verbs and taught nouns ("the white target" is a place one
puts things, a noun, and must not become the verb "place"); other words through the table of every part of
speech.

lexicon.json: {"taught": [word, ...], "replace": {word: taught word},
               "replace_by_role": {"verb": {word: taught verb or null}, "noun": {word: taught noun or null}},
               "source": str, ...}  (null: left out in that role; a word absent from a role's table is read
               through "replace")
(a lexicon without "replace_by_role", written before roles, reads every word through "replace")
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

LEXICON_FILE = "lexicon.json"
# Regular English endings, tried in order on a word the lexicon does not hold: "pushes" -> "push",
# "lifting" -> "lift", "placed" -> "place". WordNet holds lemmas only.
_PUNCTUATION = ",;:\"'()"
_ENDINGS = (("ies", "y"), ("es", ""), ("s", ""), ("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"), ("d", ""))

# Closed classes of English: the grammar that tells an imperative's verb from its nouns. They name no task.
_DETERMINERS = frozenset("the a an this that these those your its my our their his her".split())
_PREPOSITIONS = frozenset("about above across after against along among around at before behind below beneath "
                          "beside between beyond by down for from in inside into near next of off on onto out "
                          "outside over past through to toward towards under underneath until up upon with "
                          "within without".split())
_CONJUNCTIONS = frozenset("and or then but so".split())
_PRONOUNS = frozenset("it them there here".split())
_COURTESY = frozenset("please kindly can could would will you just now".split())  # before the verb
ROLES = ("verb", "noun", "modifier", "other")


def roles(words: list[str]) -> list[str]:
    """The role of each word of an imperative instruction, from word order and closed word classes alone.

    The verb: the first open-class word of the instruction or of a clause after a conjunction ("please
    lay ...", "... and lift it"). A noun phrase runs from a determiner to the next preposition,
    conjunction, pronoun, determiner or the end; its last word is its noun, the words before it modifiers
    ("the white zone"). Anything else is "other".
    """
    out = ["other"] * len(words)
    expect_verb, phrase = True, None  # phrase: the open noun phrase's word indices, None when none is open
    for i, word in enumerate(words + [""]):  # "" ends the last phrase
        closed_class = word in _DETERMINERS or word in _PREPOSITIONS or word in _CONJUNCTIONS or word in _PRONOUNS
        if expect_verb and word in _COURTESY:
            continue
        if closed_class or not word:
            if phrase:
                out[phrase[-1]] = "noun"
            phrase = [] if word in _DETERMINERS else None
            expect_verb = word in _CONJUNCTIONS
        elif expect_verb:
            out[i], expect_verb = "verb", False
        elif phrase is not None:
            out[i] = "modifier"
            phrase.append(i)
    return out


class Lexicon:
    def __init__(self, taught: list[str], replace: dict[str, str],
                 replace_by_role: dict[str, dict[str, str | None]] | None = None):
        self.taught = set(taught)
        self.replace = dict(replace)
        self.replace_by_role = {role: dict(table) for role, table in (replace_by_role or {}).items()}
        self._said: set[str] = set()

    @classmethod
    def beside(cls, tokenizer_file: str | Path) -> Lexicon | None:
        """The lexicon in the folder of `tokenizer_file`, or None when there is none.

        A file that is not a lexicon raises ValueError naming it, when the policy is loaded: before a robot
        is connected, not in the control loop."""
        path = Path(tokenizer_file).with_name(LEXICON_FILE)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(data["taught"], data["replace"], data.get("replace_by_role"))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a lexicon ({type(err).__name__}: {err}); "
                             f"rebuild it with `vla lexicon` or remove it") from err

    def word(self, word: str, role: str = "other") -> str | None:
        """A taught word for `word` in its `role` (one of ROLES), or None when it is left out."""
        by_role = self.replace_by_role.get(role, {})
        bare = word.strip(_PUNCTUATION)
        stems = [bare] + [bare[: -len(end)] + base for end, base in _ENDINGS
                          if bare.endswith(end) and len(bare) > len(end) + 1]
        for stem in stems:
            if stem in self.taught:
                return stem
            if stem in by_role:  # a taught word of that role, or None: none of its senses in that role is taught
                return by_role[stem]
            if stem in self.replace:
                return self.replace[stem]
        return None

    def rewrite(self, instruction: str) -> str:
        """A cleaned instruction (lower case, single spaces) -> the same in taught words only.

        An instruction with no word the lexicon can place stays as it was.
        """
        words, replaced, left_out = [], [], []
        given = instruction.split()
        for word, role in zip(given, roles([word.strip(_PUNCTUATION) for word in given])):
            taught = self.word(word, role)
            if taught is None:
                left_out.append(word)
            else:
                words.append(taught)
                if taught != word:
                    replaced.append(f"{word} -> {taught}")
        if not words:
            return instruction
        rewritten = " ".join(words)
        if rewritten != instruction and instruction not in self._said:
            if len(self._said) > 1024:  # a robot hears a few instructions; a noisy training run, endless ones
                self._said.clear()
            self._said.add(instruction)
            warnings.warn(f"instruction {instruction!r} read as {rewritten!r} (replaced: {', '.join(replaced) or 'none'};"
                          f" not known: {', '.join(left_out) or 'none'})", stacklevel=4)
        return rewritten


def copy_lexicon(tokenizer_file: str | Path, directory: str | Path) -> None:
    """Copy the lexicon beside `tokenizer_file`, if there is one, into `directory` (a checkpoint or export)."""
    source = Path(tokenizer_file).with_name(LEXICON_FILE)
    if source.exists():
        shutil.copyfile(source, Path(directory) / LEXICON_FILE)
