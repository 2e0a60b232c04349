"""Captions and text queries for the synthetic corpus.

A caption names every call in a clip (one of the call's phrasings, sometimes with
attribute words: high/low, fast/slow, distant), joins them by a template that says
whether they follow each other or overlap, and often names the background. Phrasings
come in two pools: *seen* (train, val and test captions) and *held out* (only test
captions and queries), so the test split measures generalisation to new wording.

`queries_for(label)` gives the natural text queries for the demo and the evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .calls import CALLS, CallType, call_type

# Attribute words: (seen, held out). The seen words are also used to avoid doubling
# up ("fast rapid trill"): a category is skipped when the phrase already has one.
ATTRIBUTE_WORDS = {
    "high": (("high", "high-pitched"), ("shrill",)),
    "low": (("low", "low-pitched"), ("deep",)),
    "fast": (("fast", "rapid"), ("quick",)),
    "slow": (("slow",), ("unhurried",)),
    "distant": (("distant", "faint"), ("far-off",)),
}
_CATEGORY = {"high": "pitch", "low": "pitch", "fast": "tempo", "slow": "tempo",
             "distant": "distance"}

# How sources are joined: {a}, {b}, {c} are source phrases in onset order.
SEQUENCE_TEMPLATES = (("{a}, then {b}", "{a} followed by {b}"), ("{b} after {a}",))
OVERLAP_TEMPLATES = (("{a} and {b}", "{a} with {b}"), ("{a} overlapping {b}",))
TRIPLE_TEMPLATES = (("{a}, {b} and {c}", "{a}, {b}, and {c}"), ("{a} plus {b} plus {c}",))

# How the background is named: {s} is the sources part, {bg} a background phrase.
BACKGROUND_TEMPLATES = (("{s} with {bg} in the background", "{s} over {bg}", "{s} and {bg}"),
                        ("{s} against a backdrop of {bg}",))
BACKGROUND_PHRASES = {
    "pink": (("steady hiss", "static noise"), ("white-noise hiss",)),
    "rain": (("rain", "falling rain"), ("a downpour",)),
    "wind": (("wind", "gusty wind"), ("a breeze",)),
    # the held-out noise condition: all of its words appear only in the test split
    "stream": ((), ("a babbling stream", "running water", "a brook")),
}
QUIET_TEMPLATES = (("{s} in a quiet forest", "{s} with little background noise"),
                   ("{s} in near silence",))

# Probability that a caption names its background (the quiet one always gets a template).
_MENTION_BACKGROUND = 0.75


@dataclass(frozen=True)
class SourceWords:
    """What the caption writer needs to know about one source in a clip."""

    label: str
    onset_s: float
    offset_s: float
    attributes: tuple[str, ...]  # keys of ATTRIBUTE_WORDS that apply to this rendering


def attributes_for(call: CallType, pitch: float, tempo: float, snr_db: float) -> tuple[str, ...]:
    """The attribute keys a rendering earns: extreme pitch/tempo knobs, a weak source."""
    out = []
    if call.pitch_words and abs(pitch) > 0.5:
        out.append("high" if pitch > 0 else "low")
    if call.tempo_words and abs(tempo) > 0.5:
        out.append("fast" if tempo > 0 else "slow")
    if snr_db < 5.0:
        out.append("distant")
    return tuple(out)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z][a-z'-]*", text.lower()))


def _pool(pair: tuple[tuple[str, ...], tuple[str, ...]], heldout: bool) -> tuple[str, ...]:
    """Held-out captions draw from the held-out pool wherever it has entries."""
    seen, held = pair
    return held if (heldout and held) else seen


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def source_phrase(rng: np.random.Generator, source: SourceWords, heldout: bool) -> str:
    """One phrasing of a source with up to two attribute words in front."""
    call = call_type(source.label)
    phrase = _pick(rng, _pool((call.phrases, call.heldout_phrases), heldout))
    present = _words(phrase)
    adjectives = []
    for key in source.attributes:
        same_category = [k for k, c in _CATEGORY.items() if c == _CATEGORY[key]]
        if any(present & set(ATTRIBUTE_WORDS[k][0] + ATTRIBUTE_WORDS[k][1])
               for k in same_category):
            continue  # "fast rapid knocking": the phrase already says it
        if rng.random() < 0.7:
            adjectives.append(_pick(rng, _pool(ATTRIBUTE_WORDS[key], heldout)))
    adjectives = adjectives[:2]
    return " ".join(adjectives + [phrase])


def caption(rng: np.random.Generator, sources: list[SourceWords], background: str,
            heldout: bool) -> str:
    """A caption for sources (any order; sorted by onset here) over `background`.

    With heldout=False only seen phrasings, attribute words and templates are used; with
    heldout=True the held-out ones are used wherever a held-out choice exists.
    """
    if not sources:
        raise ValueError("a caption needs at least one source")
    srcs = sorted(sources, key=lambda s: (s.onset_s, s.label))
    parts = [source_phrase(rng, s, heldout) for s in srcs]
    if len(parts) == 1:
        text = parts[0]
    elif len(parts) == 2:
        sequential = srcs[1].onset_s >= srcs[0].offset_s
        templates = SEQUENCE_TEMPLATES if sequential else OVERLAP_TEMPLATES
        text = _pick(rng, _pool(templates, heldout)).format(a=parts[0], b=parts[1])
    else:
        text = _pick(rng, _pool(TRIPLE_TEMPLATES, heldout)).format(
            a=parts[0], b=parts[1], c=", ".join(parts[2:]))
    if background == "quiet":
        if rng.random() < _MENTION_BACKGROUND:
            text = _pick(rng, _pool(QUIET_TEMPLATES, heldout)).format(s=text)
    elif background in BACKGROUND_PHRASES and rng.random() < _MENTION_BACKGROUND:
        bg_pool = _pool(BACKGROUND_PHRASES[background], heldout or not
                        BACKGROUND_PHRASES[background][0])
        template = _pick(rng, _pool(BACKGROUND_TEMPLATES, heldout))
        text = template.format(s=text, bg=_pick(rng, bg_pool))
    return text


def heldout_markers() -> list[str]:
    """Every word or phrase that may appear only in held-out (test) captions.

    Phrasings, attribute words, stream words, and the literal text of held-out
    templates. Used by the tests and by evaluation code that slices the test split.
    """
    out = []
    for call in CALLS.values():
        out.extend(call.heldout_phrases)
    for _seen, held in ATTRIBUTE_WORDS.values():
        out.extend(held)
    for _seen, held in BACKGROUND_PHRASES.values():
        out.extend(held)
    for _seen, held in (SEQUENCE_TEMPLATES, OVERLAP_TEMPLATES, TRIPLE_TEMPLATES,
                        BACKGROUND_TEMPLATES, QUIET_TEMPLATES):
        for template in held:
            for piece in re.split(r"\{[a-z]+\}", template):
                piece = piece.strip(" ,;")
                if piece:
                    out.append(piece)
    return out


def contains_phrase(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive containment ("quick" is not in "quickly")."""
    return re.search(r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])",
                     text.lower()) is not None


def queries_for(label: str, *, heldout: bool | None = None) -> list[str]:
    """Natural text queries for a call type, e.g. "woodpecker drumming on dead wood".

    heldout=None: all of them (seen first); False: only phrasings that training captions
    use; True: only phrasings held out of training captions.
    """
    call = call_type(label)
    seen = list(call.phrases)
    held = list(call.heldout_phrases)
    if heldout is None:
        return seen + held
    return held if heldout else seen
