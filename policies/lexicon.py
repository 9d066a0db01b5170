"""Instructions rewritten into the words a policy was taught, before tokenization.

A policy trained from scratch knows only the words of its demonstrations' instructions: "carry the red
cube to the white circle" means nothing to it if "carry" was never said. A lexicon (`lexicon.json`,
beside `tokenizer.json` in a checkpoint or an export, made by `vla lexicon` from WordNet) maps each other
English word to a taught word it is a kind of ("carry" is a kind of "move", "shove" of "push", "raise" is
a synonym of "lift"), or to nothing. With one, every word of an instruction becomes a taught word or is
left out, and what was replaced or left out is said once per instruction. Without one, instructions are
tokenized as they are.

lexicon.json: {"taught": [word, ...], "replace": {word: taught word}, "source": str, ...}
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

LEXICON_FILE = "lexicon.json"
# Regular English endings, tried in order on a word the lexicon does not hold: "pushes" -> "push",
# "lifting" -> "lift", "placed" -> "place". WordNet holds lemmas only.
_ENDINGS = (("ies", "y"), ("es", ""), ("s", ""), ("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"), ("d", ""))


class Lexicon:
    def __init__(self, taught: list[str], replace: dict[str, str]):
        self.taught = set(taught)
        self.replace = dict(replace)
        self._said: set[str] = set()

    @classmethod
    def beside(cls, tokenizer_file: str | Path) -> Lexicon | None:
        """The lexicon in the folder of `tokenizer_file`, or None when there is none."""
        path = Path(tokenizer_file).with_name(LEXICON_FILE)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(data["taught"], data["replace"])

    def word(self, word: str) -> str | None:
        """A taught word for `word`, or None when it is left out."""
        bare = word.strip(",;:\"'()")
        stems = [bare] + [bare[: -len(end)] + base for end, base in _ENDINGS
                          if bare.endswith(end) and len(bare) > len(end) + 1]
        for stem in stems:
            if stem in self.taught:
                return stem
            if stem in self.replace:
                return self.replace[stem]
        return None

    def rewrite(self, instruction: str) -> str:
        """A cleaned instruction (lower case, single spaces) -> the same in taught words only.

        An instruction with no word the lexicon can place stays as it was.
        """
        words, replaced, left_out = [], [], []
        for word in instruction.split():
            taught = self.word(word)
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
