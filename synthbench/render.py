"""Numpy rendering of a :class:`~synthbench.scene.SceneSpec` into RGB frames.

Shapes are drawn from signed distance functions evaluated only inside each
object's bounding box, which gives 1-pixel anti-aliasing (small objects keep
their shape and colour after resizing) at a cost of a few vectorised numpy
ops per object and frame.  Work that does not change over time is done
once per clip: the background and every still object below the first
moving one are baked into a base canvas, and a frame identical to the
previous one (e.g. a blink-only clip) is not redrawn.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from PIL import Image

from .scene import GROWTH_RATIO, PALETTE, BackgroundSpec, ObjectSpec, SceneSpec

# Shape proportions relative to the object's radius r (half its nominal
# diameter), chosen so all shapes look about equally big; none reaches
# beyond 1.15 r, which the bounding boxes below account for.
_SQUARE_HALF = 0.8
_TRIANGLE_R = 1.15
_STAR_R, _STAR_INNER = 1.15, 0.5
_CROSS_LONG, _CROSS_SHORT = 1.05, 0.36
_EXTENT = 1.15


# --------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------

def _coords(width: int, height: int, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates rotated by ``angle_deg`` (u along, v across)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    a = math.radians(angle_deg)
    return x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, feature: float) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    gw = max(2, int(round(width / feature)) + 2)
    gh = max(2, int(round(height / feature)) + 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32)
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-6)


def render_background(bg: BackgroundSpec, width: int, height: int) -> np.ndarray:
    """Static H x W x 3 float32 background; the mix of its two colours varies by kind."""
    rng = np.random.default_rng(bg.seed)
    u, v = _coords(width, height, bg.angle)
    if bg.kind == "gradient":
        lo, hi = float(u.min()), float(u.max())
        mix = (u - lo) / max(hi - lo, 1e-6)
    elif bg.kind == "stripes":
        # Softened square wave: crisp enough to read as stripes, no aliasing.
        mix = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * u / bg.scale), 0.0, 1.0)
    elif bg.kind == "checker":
        mix = ((np.floor(u / bg.scale) + np.floor(v / bg.scale)) % 2).astype(np.float32)
    elif bg.kind == "clouds":
        mix = _smooth_noise(rng, width, height, bg.scale)
    elif bg.kind == "noise":
        mix = 0.5 + rng.normal(0.0, 0.22, (height, width)).astype(np.float32)
        mix = np.clip(mix, 0.0, 1.0)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    c0 = np.asarray(bg.colours[0], np.float32)
    c1 = np.asarray(bg.colours[1], np.float32)
    return (c0 + mix[..., None].astype(np.float32) * (c1 - c0)).astype(np.float32)


# --------------------------------------------------------------------------
# Shapes as signed distance functions (pixels; negative inside)
# --------------------------------------------------------------------------

def _box(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(u) - hx, np.abs(v) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _folded_edge(u, v, sector: float, tip: tuple[float, float], notch: tuple[float, float]) -> np.ndarray:
    """Distance to a radially symmetric outline made of one repeated edge.

    The angle is folded into [0, sector/2] measured from the nearest tip, so
    a regular polygon or star needs a single half-plane test per pixel.
    """
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u) + math.pi / 2  # tips point up (v grows downward)
    phi = np.mod(phi, sector)
    phi = np.minimum(phi, sector - phi)
    qx, qy = rho * np.cos(phi), rho * np.sin(phi)
    ex, ey = notch[0] - tip[0], notch[1] - tip[1]
    nx, ny = ey, -ex  # outward normal of the tip -> notch edge
    norm = math.hypot(nx, ny)
    if nx * tip[0] + ny * tip[1] < 0:
        nx, ny = -nx, -ny
    return ((qx - tip[0]) * nx + (qy - tip[1]) * ny) / norm


def _polygon(u, v, radius: float, n: int) -> np.ndarray:
    sector = 2 * math.pi / n
    return _folded_edge(u, v, sector, (radius, 0.0), (radius * math.cos(sector), radius * math.sin(sector)))


def _star(u, v, r: float) -> np.ndarray:
    sector = 2 * math.pi / 5
    outer, inner = _STAR_R * r, _STAR_INNER * _STAR_R * r
    return _folded_edge(u, v, sector, (outer, 0.0), (inner * math.cos(sector / 2), inner * math.sin(sector / 2)))


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return np.hypot(u, v) - r
    if shape == "square":
        return _box(u, v, _SQUARE_HALF * r, _SQUARE_HALF * r)
    if shape == "triangle":
        return _polygon(u, v, _TRIANGLE_R * r, 3)
    if shape == "star":
        return _star(u, v, r)
    if shape == "cross":
        return np.minimum(_box(u, v, _CROSS_LONG * r, _CROSS_SHORT * r), _box(u, v, _CROSS_SHORT * r, _CROSS_LONG * r))
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(canvas: np.ndarray, shape: str, colour, cx: float, cy: float, r: float, angle_deg: float) -> None:
    """Alpha-blend an anti-aliased shape into ``canvas`` (float32 H x W x 3) in place."""
    h, w = canvas.shape[:2]
    reach = _EXTENT * r + 1.5
    x0, x1 = max(int(math.floor(cx - reach)), 0), min(int(math.ceil(cx + reach)), w)
    y0, y1 = max(int(math.floor(cy - reach)), 0), min(int(math.ceil(cy + reach)), h)
    if x0 >= x1 or y0 >= y1 or r <= 0:
        return
    px = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    py = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    u = c * px + s * py
    v = -s * px + c * py
    alpha = np.clip(0.5 - shape_sdf(shape, u, v, r), 0.0, 1.0)[..., None]
    region = canvas[y0:y1, x0:x1]
    region += alpha * (np.asarray(colour, np.float32) - region)


# --------------------------------------------------------------------------
# Animation
# --------------------------------------------------------------------------

def sampler_step(spec: SceneSpec) -> int:
    """Frames between the evaluation sampler's 1 fps picks.

    The official TS2-Net loader steps ``int(fps)`` frames per "second"
    (29 at 29.97 fps), so blinking is timed in these steps: the sampler then
    sees strict visible/hidden alternation at any frame rate and length.
    """
    return max(1, int(spec.fps_num / spec.fps_den))


def object_state(o: ObjectSpec, spec: SceneSpec, i: int):
    """(cx, cy, radius, angle, visible) in pixels for frame ``i`` of ``spec``."""
    w, h = spec.width, spec.height
    t = i / max(spec.n_frames - 1, 1)  # normalised clip time
    cx = (o.start[0] + (o.end[0] - o.start[0]) * t) * w
    cy = (o.start[1] + (o.end[1] - o.start[1]) * t) * h
    scale = 1.0
    if o.motion == "grow":
        scale = GROWTH_RATIO ** (t - 0.5)
    elif o.motion == "shrink":
        scale = GROWTH_RATIO ** (0.5 - t)
    r = o.diameter * min(w, h) / 2 * scale
    angle = o.angle + o.spin * i * spec.fps_den / spec.fps_num
    visible = True
    if o.motion == "blink":
        # Half a period (1 s) is one sampler step; flips fall half-way
        # between sampled frames so picks never land on an edge.
        visible = int(math.floor(i / sampler_step(spec) + 0.5)) % 2 == 0
    return cx, cy, r, angle, visible


def draw_order(spec: SceneSpec) -> list[ObjectSpec]:
    """Largest first, so a small object is never hidden under a big one."""
    return sorted(spec.objects, key=lambda o: (-o.diameter, o.uid))


def iter_frames(spec: SceneSpec) -> Iterator[np.ndarray]:
    """Yield the clip's ``n_frames`` frames as H x W x 3 uint8 arrays.

    A yielded array may be the very same object as the previous one when
    nothing changed; consumers must not mutate it.
    """
    w, h = spec.width, spec.height
    base = render_background(spec.background, w, h)
    order = draw_order(spec)
    n_static = 0
    for o in order:  # bake the still prefix of the draw order into the base
        if o.motion != "still":
            break
        cx, cy, r, ang, _ = object_state(o, spec, 0)
        draw_shape(base, o.shape, PALETTE[o.colour], cx, cy, r, ang)
        n_static += 1
    moving = order[n_static:]
    prev_key, prev = None, None
    for i in range(spec.n_frames):
        states = [object_state(o, spec, i) for o in moving]
        key = tuple((round(cx, 3), round(cy, 3), round(r, 3), round(a % 360.0, 3), vis) for cx, cy, r, a, vis in states)
        if key != prev_key:
            canvas = base.copy()
            for o, (cx, cy, r, ang, vis) in zip(moving, states):
                if vis:
                    draw_shape(canvas, o.shape, PALETTE[o.colour], cx, cy, r, ang)
            prev = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
            prev_key = key
        yield prev
