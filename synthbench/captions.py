"""Caption grammar: every caption names each object's size, colour, shape and motion.

A caption is a list of clauses ``<object> <motion>`` joined by conjunctions,
with an optional lead-in and an optional background phrase.  Because the
clauses together cover every object, matching a caption to its clip needs
both motion (direction, growth, blinking, ...) and small objects.

Phrasing choices (synonyms, clause order, templates) come from uniform
draws made in a fixed number and order per ``(phrase_seed, variant)``.
Each object's draws are tied to its ``uid``, so two pair members with the
same phrase seed get captions that differ only where the scenes differ; and
opposite motions have position-aligned synonym lists, so a motion pair's
captions differ only in the direction words ("left"/"right", "rises"/"falls").
"""
from __future__ import annotations

import numpy as np

from .scene import MOTIONS, SceneSpec

SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
}
#: Opposite motions list their synonyms in corresponding positions.
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moves to the left", "moves left", "slides to the left", "travels left"),
    "right": ("moves to the right", "moves right", "slides to the right", "travels right"),
    "up": ("moves up", "moves upward", "rises", "goes up"),
    "down": ("moves down", "moves downward", "falls", "goes down"),
    "grow": ("grows", "gets bigger", "expands", "becomes larger"),
    "shrink": ("shrinks", "gets smaller", "contracts", "becomes smaller"),
    "rotate": ("rotates", "spins", "turns around", "keeps rotating"),
    "blink": ("blinks", "flashes", "flickers", "blinks on and off"),
    "still": ("stays still", "does not move", "remains still", "stands still"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "clouds": ("cloudy", "hazy", "mottled"),
    "stripes": ("striped", "stripy"),
    "checker": ("checkered", "chequered"),
    "gradient": ("gradient", "shaded"),
    "noise": ("noisy", "grainy"),
}
LEAD_INS: tuple[str, ...] = ("", "", "in this video ", "a video in which ", "a clip where ")
JOINERS: tuple[str, ...] = (" while ", " and ", " as ")
BACKGROUND_PREPOSITIONS: tuple[str, ...] = ("on", "over", "in front of")

assert set(MOTION_PHRASES) == set(MOTIONS)

_MAX_UIDS = 8  # per-object draw slots; scenes have at most a handful of objects
_GLOBAL_DRAWS = 7

#: Word budget of a caption, counting a hyphenated word as its pieces plus
#: hyphens (as CLIP's BPE does).  TS2-Net reads at most 32 tokens including
#: start/end; truncation would cut off a clause and the caption would no
#: longer describe every object.  Few of our words take two BPE tokens, so
#: 24 counted words stay within 30 tokens.
MAX_CAPTION_WORDS = 24
#: Simplification levels tried in order until a caption fits the budget:
#: 0 full, 1 without lead-in, 2 also without background, 3 also without the
#: "there is ... that" style, 4 also with the shortest synonyms.
MAX_LEVEL = 4


def caption_length(text: str) -> int:
    return sum(1 + 2 * word.count("-") for word in text.split())


def _pick(options: tuple[str, ...], u: float, shortest: bool = False) -> str:
    if shortest:
        return min(options, key=caption_length)
    return options[min(int(u * len(options)), len(options) - 1)]


def _compose(spec: SceneSpec, variant: int, level: int) -> str:
    draws = np.random.default_rng([spec.phrase_seed, variant]).random(_GLOBAL_DRAWS + 4 * _MAX_UIDS)
    g, per = draws[:_GLOBAL_DRAWS], draws[_GLOBAL_DRAWS:].reshape(_MAX_UIDS, 4)
    short = level >= 4
    objects = sorted(spec.objects, key=lambda o: per[o.uid, 0])  # clause order
    nouns, verbs = [], []
    for o in objects:
        _, u_size, u_shape, u_motion = per[o.uid]
        size = _pick(SIZE_WORDS[o.size], u_size, short)
        nouns.append(f"a {size} {o.colour} {_pick(SHAPE_WORDS[o.shape], u_shape, short)}")
        verbs.append(_pick(MOTION_PHRASES[o.motion], u_motion, short))
    clauses = [f"{n} {v}" for n, v in zip(nouns, verbs)]
    if g[0] < 0.2 and level < 3:  # relative-clause style for the first object
        clauses[0] = f"there is {nouns[0]} that {verbs[0]}"
    text = clauses[0]
    if len(clauses) > 1:
        text += _pick(JOINERS, g[1]) + clauses[1]
    for extra in clauses[2:]:
        text += " and " + extra
    if level < 1:
        text = _pick(LEAD_INS, g[2]) + text
    if g[3] < 0.5 and level < 2:  # background phrase only half of the time
        prep = _pick(BACKGROUND_PREPOSITIONS, g[4])
        text += f" {prep} a {_pick(BACKGROUND_WORDS[spec.background.kind], g[5])} background"
    return text


def fitting_level(spec: SceneSpec, variant: int = 0) -> int:
    """The least simplified level at which the caption fits the word budget."""
    for level in range(MAX_LEVEL + 1):
        if caption_length(_compose(spec, variant, level)) <= MAX_CAPTION_WORDS:
            return level
    return MAX_LEVEL


def caption(spec: SceneSpec, variant: int = 0, level: int | None = None) -> str:
    """One lowercase caption for ``spec``; ``variant`` selects another phrasing."""
    return _compose(spec, variant, fitting_level(spec, variant) if level is None else level)


def aligned_captions(specs: list[SceneSpec], variant: int = 0) -> list[str]:
    """Captions of pair members, simplified alike so they differ only where the scenes do."""
    level = max(fitting_level(s, variant) for s in specs)
    return [_compose(s, variant, level) for s in specs]


def captions_for(spec: SceneSpec, n: int) -> list[str]:
    """``n`` distinct phrasings (fewer only if the grammar runs out)."""
    return aligned_caption_sets([spec], n)[0]


def aligned_caption_sets(specs: list[SceneSpec], n: int) -> list[list[str]]:
    """``n`` distinct phrasings for each of ``specs`` (pair members), aligned variant by variant.

    Caption i of one member and caption i of the other differ only in the words for what the
    scenes differ in, so a trainer that puts both in a batch teaches exactly that difference.
    """
    out: list[list[str]] = [[] for _ in specs]
    seen: set[tuple[str, ...]] = set()
    for variant in range(20 * n):
        texts = tuple(aligned_captions(specs, variant))
        if texts not in seen and all(t not in done for t, done in zip(texts, out)):
            seen.add(texts)
            for t, done in zip(texts, out):
                done.append(t)
            if len(out[0]) == n:
                break
    return out


def motions_in(text: str) -> set[str]:
    """Motions whose phrases occur in ``text`` (for checks and analysis)."""
    return {m for m, phrases in MOTION_PHRASES.items() if any(p in text for p in phrases)}
