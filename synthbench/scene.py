"""Scene specifications and their deterministic sampling.

A clip is fully described by a :class:`SceneSpec`: frame size, frame rate,
length, a background recipe and 1-3 objects, each with a shape, a colour, a
size class and one motion.  Rendering (``render.py``) and captioning
(``captions.py``) are pure functions of the spec, so the spec is the single
source of truth that ``scenes.jsonl`` records for reproducibility.

Translation and growth are parametrised by the normalised clip time ``t``
in [0, 1], so they span the whole clip whether it lasts 2 s or 20 s and
are obvious in the model's one-frame-per-second samples.  Rotation and
blinking are periodic, so they are timed in seconds (blinking precisely in
the evaluation sampler's steps) to stay clear of aliasing at that rate.

Objects are placed inside the centred square of side min(width, height),
the part of the frame that survives the model's resize + centre crop.

Sampling is seeded per clip from ``(seed, split, index, attempt)`` so any
split can be regenerated on its own and a rejected draw (duplicate test
caption) is replaced by a new, still deterministic, attempt.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np

# --------------------------------------------------------------------------
# Vocabulary of the world.  Changing any of these changes the pixels, so the
# generator version (in generate.py) must be bumped with them.
# --------------------------------------------------------------------------

#: Well separated, saturated colours; backgrounds are kept desaturated and of
#: middle brightness so every palette colour stands out against them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (35, 75, 235),
    "yellow": (245, 220, 30),
    "purple": (150, 40, 205),
    "orange": (250, 135, 15),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
#: Rotational symmetry period in degrees; a circle has none, so it cannot
#: visibly rotate and is never given the ``rotate`` motion.
SYMMETRY_DEG: dict[str, float] = {"square": 90.0, "triangle": 120.0, "star": 72.0, "cross": 90.0}
ROTATABLE: tuple[str, ...] = tuple(s for s in SHAPES if s in SYMMETRY_DEG)

#: Diameter ranges as a fraction of the frame's short side.  "small" is
#: ~6-8 % so it covers only a few patches once the model resizes to ~64 px.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.06, 0.08),
    "medium": (0.16, 0.24),
    "large": (0.35, 0.45),
}
SIZE_WEIGHTS: tuple[float, ...] = (0.4, 0.3, 0.3)

MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "grow", "shrink", "rotate", "blink", "still")
#: Motions whose direction can be reversed; these build the "motion" pairs.
OPPOSITE: dict[str, str] = {
    "left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow",
}
TRANSLATIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}

BACKGROUNDS: tuple[str, ...] = ("clouds", "stripes", "checker", "gradient", "noise")

FPS_CHOICES: tuple[tuple[int, int], ...] = ((24, 1), (25, 1), (30, 1), (30000, 1001))
#: (width, height); all even because the clips are encoded as yuv420p.
FRAME_SIZES: tuple[tuple[int, int], ...] = ((128, 96), (160, 120), (96, 128), (144, 144))

#: Blinking objects are visible for ~1 s, hidden for ~1 s (precisely: for
#: int(fps) frames each, the step of the 1 fps evaluation sampler; see
#: render.sampler_step).  Period ~2 s.

#: Growing objects scale from 1/sqrt(r) to sqrt(r) of their nominal size.
GROWTH_RATIO = 2.5
#: Rotation speed as a fraction of the shape's symmetry period per second:
#: 0.3 keeps the gaps between the (up to 12) sampled frames, 1-2 sampler
#: steps of ~1 s, at 0.3-0.6 periods, far from the aliasing multiples.
SPIN_PERIODS_PER_S = 0.3

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
#: Video ids are ``video{offset + index}``; fixed per-split offsets keep ids
#: disjoint and independent of the other splits' sizes.
ID_OFFSET: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
MAX_CLIPS_PER_SPLIT = 1_000_000


@dataclass(frozen=True)
class GenParams:
    """Knobs of a split's content distribution (recorded in meta.json)."""

    min_duration: float = 2.0
    max_duration: float = 20.0
    max_objects: int = 3
    motion_pair_frac: float = 0.25
    small_pair_frac: float = 0.25
    train_captions: int = 5
    #: Train clips in hard pairs too: the trainer keeps both members in one batch, so the
    #: contrastive loss must tell a direction (or a small object) apart; random batches of 16
    #: almost never hold two scenes that differ in only that.
    train_motion_pair_frac: float = 0.4
    train_small_pair_frac: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GenParams":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class ObjectSpec:
    """One object; positions are normalised (x / width, y / height)."""

    uid: int  # stable identity across the two members of a pair
    shape: str
    colour: str
    size: str
    diameter: float  # fraction of the short side (nominal, i.e. at t = 0.5)
    motion: str
    start: tuple[float, float]  # centre at t = 0
    end: tuple[float, float]  # centre at t = 1 (== start unless translating)
    angle: float  # degrees at time 0
    spin: float  # degrees per second (non-zero only for "rotate")

    def max_scale(self) -> float:
        return math.sqrt(GROWTH_RATIO) if self.motion in ("grow", "shrink") else 1.0


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    angle: float  # degrees, orientation of stripes / gradient / checker
    scale: float  # pixels: stripe period, checker cell, cloud feature size
    seed: int  # for the random textures


@dataclass(frozen=True)
class SceneSpec:
    video_id: str
    split: str
    index: int
    attempt: int
    width: int
    height: int
    fps_num: int
    fps_den: int
    n_frames: int
    background: BackgroundSpec
    objects: tuple[ObjectSpec, ...]
    phrase_seed: int  # shared by pair members so their captions align word for word
    subset: str = "ordinary"  # "ordinary" | "motion" | "small_object"
    pair: str | None = None  # partner video id for pair members
    pair_change: str | None = None  # what differs from the partner

    @property
    def fps(self) -> float:
        return self.fps_num / self.fps_den

    @property
    def duration(self) -> float:
        return self.n_frames * self.fps_den / self.fps_num

    @property
    def category(self) -> int:
        """MSR-VTT has an integer category; ours is the first object's motion."""
        return MOTIONS.index(self.objects[0].motion)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SceneSpec":
        bg = d["background"]
        background = BackgroundSpec(
            kind=bg["kind"], colours=tuple(tuple(c) for c in bg["colours"]),
            angle=bg["angle"], scale=bg["scale"], seed=bg["seed"],
        )
        objects = tuple(
            ObjectSpec(**{**o, "start": tuple(o["start"]), "end": tuple(o["end"])}) for o in d["objects"]
        )
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k not in ("background", "objects")}
        return cls(background=background, objects=objects, **fields)

    def render_hash(self) -> str:
        """Fingerprint of everything that affects the pixels (not ids or captions)."""
        d = self.to_dict()
        keep = {k: d[k] for k in ("width", "height", "fps_num", "fps_den", "n_frames", "background", "objects")}
        blob = json.dumps(keep, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()


def content_key(objects: Iterable[ObjectSpec]) -> tuple:
    """What a caption pins down: the multiset of (size, colour, shape, motion).

    Test captions must be unique up to this key, not merely as strings:
    two captions listing the same objects in another order or with
    synonyms describe the same video and would cap retrieval below 100 %.
    The background is deliberately excluded because captions may omit it.
    """
    return tuple(sorted((o.size, o.colour, o.shape, o.motion) for o in objects))


def video_id(split: str, index: int) -> str:
    return f"video{ID_OFFSET[split] + index}"


def clip_rng(seed: int, split: str, index: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index, attempt]))


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------

def _choice(rng: np.random.Generator, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def _sample_background(rng: np.random.Generator, width: int, height: int) -> BackgroundSpec:
    kind = _choice(rng, BACKGROUNDS)
    # Desaturated, mid-brightness base with a moderate second colour, so the
    # texture is visible but never competes with the saturated palette.
    level = rng.uniform(85, 165)
    c0 = np.clip(level + rng.uniform(-14, 14, 3), 60, 190)
    shift = rng.uniform(20, 40) * (1 if rng.random() < 0.5 else -1)
    c1 = np.clip(c0 + shift + rng.uniform(-8, 8, 3), 55, 195)
    short = min(width, height)
    scale = {
        "clouds": rng.uniform(0.25, 0.5) * short,
        "stripes": rng.uniform(0.08, 0.2) * short,
        "checker": rng.uniform(0.08, 0.18) * short,
        "gradient": float(short),
        "noise": 1.0,
    }[kind]
    return BackgroundSpec(
        kind=kind,
        colours=(tuple(int(round(v)) for v in c0), tuple(int(round(v)) for v in c1)),
        angle=round(float(rng.uniform(0, 180)), 3),
        scale=round(float(scale), 3),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _sample_object(rng, uid: int, width: int, height: int, colours: list[str]) -> ObjectSpec:
    motion = _choice(rng, MOTIONS)
    shape = _choice(rng, ROTATABLE if motion == "rotate" else SHAPES)
    colour = _choice(rng, colours)
    size = _choice(rng, tuple(SIZES), p=SIZE_WEIGHTS)
    lo, hi = SIZES[size]
    diameter = float(rng.uniform(lo, hi))
    # Positions are drawn in units of the centred short-side square: the
    # model's loader resizes the short side and centre-crops that square, so
    # an object outside it would be invisible to the model yet named in the
    # caption.  The margin keeps (almost) all of the object inside.
    radius = diameter / 2 * (math.sqrt(GROWTH_RATIO) if motion in ("grow", "shrink") else 1.0)
    margin = min(radius, 0.2) + 0.03
    span = 1 - 2 * margin
    pos = [float(rng.uniform(margin, 1 - margin)) for _ in range(2)]
    start, end = list(pos), list(pos)
    if motion in TRANSLATIONS:  # cross 70-100 % of the free span of the square
        axis, sign = TRANSLATIONS[motion]
        travel = rng.uniform(0.7, 1.0) * span
        a = margin + rng.uniform(0, span - travel)
        b = a + travel
        start[axis], end[axis] = (a, b) if sign > 0 else (b, a)
    short = min(width, height)

    def to_frame(p: list[float]) -> tuple[float, float]:
        return (
            round(((width - short) / 2 + p[0] * short) / width, 5),
            round(((height - short) / 2 + p[1] * short) / height, 5),
        )

    period = SYMMETRY_DEG.get(shape, 360.0)
    spin = 0.0
    if motion == "rotate":
        spin = SPIN_PERIODS_PER_S * period * (1 if rng.random() < 0.5 else -1)
    return ObjectSpec(
        uid=uid, shape=shape, colour=colour, size=size, diameter=round(diameter, 5), motion=motion,
        start=to_frame(start), end=to_frame(end),
        angle=round(float(rng.uniform(0, period)), 3), spin=spin,
    )


def swept_box(o: ObjectSpec, width: int, height: int) -> tuple[float, float, float, float]:
    """Pixel box the object can ever cover (its path plus its largest extent)."""
    r = o.diameter * min(width, height) / 2 * o.max_scale() * 1.15
    xs = (o.start[0] * width, o.end[0] * width)
    ys = (o.start[1] * height, o.end[1] * height)
    return (min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r)


def _overlap(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / area


def _sample_objects(rng, width: int, height: int, n: int) -> tuple[ObjectSpec, ...]:
    """Place objects whose swept paths (almost) never overlap.

    Occlusion would make a caption unverifiable from the pixels (a small
    object hidden behind a large one), so overlapping draws are rejected; an
    object that cannot be placed after a few tries is dropped.
    """
    objects: list[ObjectSpec] = []
    boxes = []
    for uid in range(n):
        free = [c for c in COLOURS if c not in {o.colour for o in objects}]
        for _ in range(30):
            o = _sample_object(rng, uid, width, height, free)
            box = swept_box(o, width, height)
            if all(_overlap(box, b) <= 0.04 for b in boxes):
                objects.append(o)
                boxes.append(box)
                break
    return tuple(objects)


def sample_scene(rng: np.random.Generator, params: GenParams, **ids) -> SceneSpec:
    """Draw one complete scene; ``ids`` fills the bookkeeping fields."""
    width, height = _choice(rng, FRAME_SIZES)
    fps_num, fps_den = _choice(rng, FPS_CHOICES)
    # Log-uniform durations: many short clips (fewer than 12 one-per-second
    # samples, like much of MSR-VTT) and a tail of long ones.
    duration = math.exp(rng.uniform(math.log(params.min_duration), math.log(params.max_duration)))
    n_frames = max(2, int(round(duration * fps_num / fps_den)))
    background = _sample_background(rng, width, height)
    n_obj = int(rng.integers(1, params.max_objects + 1))
    objects = _sample_objects(rng, width, height, n_obj)
    phrase_seed = int(rng.integers(0, 2**31 - 1))
    return SceneSpec(
        width=width, height=height, fps_num=fps_num, fps_den=fps_den, n_frames=n_frames,
        background=background, objects=objects, phrase_seed=phrase_seed, **ids,
    )


# --------------------------------------------------------------------------
# Hard pairs
# --------------------------------------------------------------------------

def reverse_motion(o: ObjectSpec) -> ObjectSpec:
    """Same object on the same path, travelled (or scaled) the other way."""
    return replace(o, motion=OPPOSITE[o.motion], start=o.end, end=o.start)


def _motion_pair(rng, base: SceneSpec):
    flippable = [o for o in base.objects if o.motion in OPPOSITE]
    if not flippable:
        return None
    target = _choice(rng, flippable)
    other = tuple(reverse_motion(o) if o.uid == target.uid else o for o in base.objects)
    return base.objects, other, "motion", target.uid


def _small_object_pair(rng, base: SceneSpec):
    small = [o for o in base.objects if o.size == "small"]
    if not small:
        return None
    target = _choice(rng, small)
    changes = ["colour", "shape"] + (["presence"] if len(base.objects) >= 2 else [])
    change = _choice(rng, changes)
    if change == "colour":
        used = {o.colour for o in base.objects}
        new = replace(target, colour=_choice(rng, [c for c in COLOURS if c not in used]))
    elif change == "shape":
        pool = ROTATABLE if target.motion == "rotate" else SHAPES
        new = replace(target, shape=_choice(rng, [s for s in pool if s != target.shape]))
    else:
        new = None
    swapped = (new if o.uid == target.uid else o for o in base.objects)
    other = tuple(o for o in swapped if o is not None)
    return base.objects, other, change, target.uid


def describe_change(kind: str, uid: int, here: tuple[ObjectSpec, ...], there: tuple[ObjectSpec, ...]) -> str:
    """What distinguishes a clip from its partner, from the clip's side.

    E.g. ``"motion of object 0: up vs down"`` or ``"presence of object 2:
    absent vs present"``; the first word is the kind of change.
    """
    def value(objects):
        obj = next((o for o in objects if o.uid == uid), None)
        if kind == "presence":
            return "present" if obj else "absent"
        return getattr(obj, kind)

    return f"{kind} of object {uid}: {value(here)} vs {value(there)}"


_PAIR_BUILDERS = {"motion": _motion_pair, "small_object": _small_object_pair}


def split_layout(split: str, n: int, params: GenParams) -> list[str]:
    """Subset of every index: pairs first (at even/odd neighbours), then ordinary.

    The test split's pairs are the hard subsets the evaluation reports; the train split's are
    hard negatives for training; the validation split has none (it tracks plain retrieval).
    """
    if split == "val":
        return ["ordinary"] * n
    motion_frac, small_frac = ((params.motion_pair_frac, params.small_pair_frac) if split == "test"
                               else (params.train_motion_pair_frac, params.train_small_pair_frac))
    n_motion = 2 * (int(n * motion_frac) // 2)
    n_small = 2 * (int(n * small_frac) // 2)
    if n_motion + n_small > n:
        raise ValueError(f"pair fractions exceed the {split} split")
    return ["motion"] * n_motion + ["small_object"] * n_small + ["ordinary"] * (n - n_motion - n_small)


def plan_split(seed: int, split: str, n: int, params: GenParams, max_attempts: int = 10_000) -> list[SceneSpec]:
    """All scene specs of one split, in index order.

    Evaluation splits (val, test) get one caption per clip, so their clips
    must have pairwise distinct :func:`content_key`; a clashing draw is
    replaced by the next attempt of the same index.  Pairs are drawn as a
    unit from the seed of their first index and both members must be new.
    """
    if n > MAX_CLIPS_PER_SPLIT:
        raise ValueError(f"at most {MAX_CLIPS_PER_SPLIT} clips per split")
    layout = split_layout(split, n, params)
    unique = split in ("val", "test")
    seen: set[tuple] = set()
    specs: list[SceneSpec] = []
    i = 0
    while i < n:
        subset = layout[i]
        for attempt in range(max_attempts):
            rng = clip_rng(seed, split, i, attempt)
            base = sample_scene(
                rng, params, video_id=video_id(split, i), split=split, index=i, attempt=attempt, subset=subset,
            )
            if subset == "ordinary":
                members = [base]
            else:
                built = _PAIR_BUILDERS[subset](rng, base)
                if built is None:
                    continue
                objs_a, objs_b, kind, uid = built
                if rng.random() < 0.5:  # which member carries the change is random
                    objs_a, objs_b = objs_b, objs_a
                ida, idb = video_id(split, i), video_id(split, i + 1)
                members = [
                    replace(base, objects=objs_a, pair=idb, pair_change=describe_change(kind, uid, objs_a, objs_b)),
                    replace(base, objects=objs_b, video_id=idb, index=i + 1, pair=ida,
                            pair_change=describe_change(kind, uid, objs_b, objs_a)),
                ]
            keys = [content_key(m.objects) for m in members]
            if unique and (len(set(keys)) < len(keys) or any(k in seen for k in keys)):
                continue
            break
        else:
            raise RuntimeError(f"could not draw a unique scene for {split}[{i}]")
        if unique:
            seen.update(keys)
        specs.extend(members)
        i += len(members)
    return specs
