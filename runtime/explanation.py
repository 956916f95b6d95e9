"""Why a video matched a query, drawn from what the deployed model computed (torch-free).

TS2-Net's own parts are visible in what the graphs and the similarity already produce:

* the video graph's ``patch_indices`` [T, K]: the K patch tokens the token selector kept in each
  frame (0-based patch numbers in row-major order over the ``G x G`` grid, ``G = image_size //
  patch_size``, so patch p sits at row ``p // G``, column ``p % G``; token ``p + 1``, because
  token 0 is the frame's CLS token, which is always kept);
* the similarity's per-frame cosines ``s_f`` and query-dependent frame weights ``w_f``
  (``runtime.frame_similarity.frame_scores``, the very blocks ``similarity`` ranks by), whose
  weighted sum times ``logit_scale`` is the score.

:func:`explain` encodes one video and one query and returns an :class:`Explanation`;
:func:`explain_indexed` takes the frame embeddings from an index instead (so the score and the
rank are the ones ``ts2net search`` reports) and re-runs only the video graph, for the patches;
:func:`explain_search` does that for every result of a search and writes an ``index.html``.
Each explanation is one PNG (what a person looks at) and one JSON (every number drawn).

Frame times are ``frame_number / fps`` with the frame numbers the loader sampled
(``runtime.video.sample_video``, the official 1-fps rule) and the stream's real frame rate.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .bundle import Bundle, open_bundle
from .encoder import BundleEncoder, sample_bundle_video
from .files import atomic_write_bytes, atomic_write_text, sha256_file
from .frame_similarity import frame_scores
from .bundle_format import CLIP_MEAN, CLIP_STD
from .video import SampledVideo

__all__ = ["EXPLANATION_FORMAT", "ExplainError", "Explanation", "FrameDetail", "explain", "explain_indexed",
           "explain_search", "figure_size_px"]

EXPLANATION_FORMAT = "ts2net-explanation"
EXPLANATION_VERSION = 1


class ExplainError(ValueError):
    """An explanation that cannot be made (empty query, missing graph outputs, changed video...)."""


@dataclass(frozen=True)
class Patch:
    index: int   # 0-based patch number (token index + 1 in the graph's sequence)
    row: int
    col: int


@dataclass(frozen=True)
class FrameDetail:
    """One of the max_frames slots of the video graph."""

    slot: int
    real: bool                    # a sampled frame (frame_mask 1), else a zero padding slot
    counted: bool                 # can get weight: the effective mask (official mode differs for padded videos)
    frame_number: Optional[int]   # decode position of the sampled frame, None for padding
    time_s: Optional[float]       # frame_number / fps
    cosine: float                 # s_f
    weight: float                 # w_f
    patches: tuple[Patch, ...]    # the K kept patch tokens, ascending (empty without token selection)


@dataclass
class Explanation:
    """Everything one explanation shows; :meth:`to_dict` is the JSON, :meth:`write` the files."""

    query: str
    video_path: str
    video_id: str
    score: float
    frames: list[FrameDetail]
    similarity: dict[str, Any]
    grid: dict[str, Any]          # rows, cols, patch_size, image_size, top_k
    bundle: dict[str, Any]        # path, id, model
    backend: str
    precision: str
    fps: float
    decoded_frames: int
    rank: Optional[int] = None
    index: Optional[dict[str, Any]] = None   # path, n_videos (when the frame embeddings came from an index)
    pixels: np.ndarray = field(default=None, repr=False)   # float32 [T, 3, S, S], the normalised graph input
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    files: Optional[tuple[Path, Path]] = None   # (png, json) once written

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPLANATION_FORMAT,
            "version": EXPLANATION_VERSION,
            "query": self.query,
            "score": self.score,
            "rank": self.rank,
            "index": self.index,
            "video": {"path": self.video_path, "id": self.video_id, "fps": self.fps,
                      "decoded_frames": self.decoded_frames,
                      "sampled_frames": sum(f.real for f in self.frames)},
            "bundle": self.bundle,
            "backend": self.backend,
            "precision": self.precision,
            "similarity": self.similarity,
            "patch_grid": {**self.grid, "cls_kept": True,
                           "order": "row-major: patch p at row p // cols, col p % cols; token p + 1"},
            "frames": [{"slot": f.slot, "real": f.real, "counted": f.counted, "frame_number": f.frame_number,
                        "time_s": f.time_s, "cosine": f.cosine, "weight": f.weight,
                        "patches": [{"index": p.index, "token": p.index + 1, "row": p.row, "col": p.col}
                                    for p in f.patches]}
                       for f in self.frames],
        }

    def write(self, out_dir: str | os.PathLike, stem: Optional[str] = None) -> tuple[Path, Path]:
        """Write ``<stem>.png`` and ``<stem>.json`` into ``out_dir`` (atomically); returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or default_stem(self.video_id, self.query)
        png, js = out / f"{stem}.png", out / f"{stem}.json"
        width, height = render_png(self, png)
        data = self.to_dict()
        data["image"] = {"file": png.name, "width": width, "height": height}
        atomic_write_text(js, json.dumps(data, indent=1, allow_nan=False) + "\n")
        self.files = (png, js)
        return png, js


def default_stem(video_id: str, query: str) -> str:
    """``<video id>--<query words>``: one file pair per (video, query), readable in a listing."""
    words = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:48].rstrip("-")
    return f"{_safe_name(video_id)}--{words or 'query'}"


def _safe_name(video_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)


# --------------------------------------------------------------------------------------------
# computing an explanation
# --------------------------------------------------------------------------------------------

def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ExplainError(f"the query is empty ({query!r}): pass the text to explain, e.g. \"a dog running\"")
    return query


def _encode_video(encoder: BundleEncoder, sampled: SampledVideo, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the video graph on one sampled video; insists on the outputs an explanation draws."""
    bundle = encoder.bundle
    names = encoder.backend("video").output_names
    where = f"the video graph of {bundle.path} ({encoder.backend_name}, {encoder.backend('video').precision})"
    if "frame_embeds" not in names:
        raise ExplainError(f"{where} has no `frame_embeds` output (outputs: {names}); explain needs a ts2net bundle "
                           "(re-export it with `ts2net export`)")
    if bundle.top_k is not None and "patch_indices" not in names:
        raise ExplainError(f"{where} has no `patch_indices` output (outputs: {names}) although the model selects "
                           f"top_k={bundle.top_k} patches; re-export the bundle with `ts2net export` to get it")
    frame_embeds, patch_indices = encoder.encode_frames(sampled.frames[None], sampled.mask[None])
    return frame_embeds, patch_indices


def _patches(indices: np.ndarray | None, grid: int, where: str) -> list[tuple[Patch, ...]]:
    if indices is None:
        return []
    rows = []
    for slot, frame in enumerate(np.asarray(indices)):
        bad = [int(p) for p in frame if not 0 <= int(p) < grid * grid]
        if bad:
            raise ExplainError(f"{where}: patch_indices of frame slot {slot} hold {bad}, outside the {grid}x{grid} "
                               "patch grid (0-based patch numbers expected); the bundle's graph does not follow the "
                               "I/O contract")
        rows.append(tuple(Patch(int(p), int(p) // grid, int(p) % grid) for p in frame))
    return rows


def _build(bundle: Bundle, query: str, path: str, video_id: str, sampled: SampledVideo, terms, column: int,
           patch_indices: np.ndarray | None, similarity_args: dict[str, Any], backend: str,
           precision: str) -> Explanation:
    """The explanation of one video (``terms`` describes exactly one) for text ``column`` of ``terms``."""
    numbers = (terms.cosines[0, :, column], terms.weights[0, :, column], terms.scores[column, :1])
    if not all(np.isfinite(a).all() for a in numbers):
        raise ExplainError(f"{path}: the similarity of this video holds non-finite numbers (NaN/inf) under "
                           f"{backend} {precision}: its frame embeddings are broken; check the bundle with "
                           f"`ts2net parity --backend {backend} --precision {precision}`")
    patch_size = int(bundle.model["patch_size"])
    grid = bundle.image_size // patch_size
    patches = _patches(None if patch_indices is None else patch_indices[0], grid, str(path))
    frames = []
    for slot in range(terms.effective_mask.shape[1]):
        real = slot < len(sampled.frame_numbers)
        number = sampled.frame_numbers[slot] if real else None
        frames.append(FrameDetail(
            slot=slot, real=real, counted=bool(terms.effective_mask[0, slot]), frame_number=number,
            time_s=number / sampled.fps if real else None, cosine=float(terms.cosines[0, slot, column]),
            weight=float(terms.weights[0, slot, column]), patches=patches[slot] if patches else ()))
    pre = bundle.preprocessing
    return Explanation(
        query=query, video_path=str(path), video_id=video_id, score=float(terms.scores[column, 0]), frames=frames,
        similarity=dict(similarity_args),
        grid={"rows": grid, "cols": grid, "patch_size": patch_size, "image_size": bundle.image_size,
              "top_k": bundle.top_k},
        bundle={"path": str(bundle.path), "id": bundle.content_id, "model": bundle.model.get("name")},
        backend=backend, precision=precision, fps=sampled.fps, decoded_frames=sampled.decoded_frames,
        pixels=sampled.frames, mean=tuple(pre.get("mean", CLIP_MEAN)), std=tuple(pre.get("std", CLIP_STD)))


def _open_encoder(bundle, backend: str, precision: Optional[str], threads: Optional[int]) -> BundleEncoder:
    return BundleEncoder(bundle if isinstance(bundle, Bundle) else open_bundle(bundle), backend=backend,
                         precision=precision, batch_size=1, threads=threads)


def explain(bundle: Bundle | str | os.PathLike, video: str | os.PathLike, query: str,
            out: str | os.PathLike | None = None, *, backend: str = "ort-cpu", precision: Optional[str] = None,
            threads: Optional[int] = None, encoder: Optional[BundleEncoder] = None) -> Explanation:
    """Explain the score of ``video`` for ``query`` under ``bundle``; with ``out``, write the PNG + JSON there.

    The video is decoded and sampled as everywhere else (official 1-fps rule), encoded by the
    chosen backend and precision (any the runtime has), and scored by ``frame_scores``, the code
    behind ``similarity``: the score equals what ``search`` and ``eval`` compute for the pair.
    Raises ``VideoDecodeError`` for an unreadable video and ``ExplainError`` for an empty query
    or a bundle whose video graph lacks ``frame_embeds`` / ``patch_indices``.
    """
    _check_query(query)
    own = encoder is None
    enc = encoder or _open_encoder(bundle, backend, precision, threads)
    try:
        path = os.fspath(video)
        sampled = sample_bundle_video(enc.bundle, path)
        frame_embeds, patch_indices = _encode_video(enc, sampled, path)
        text = np.asarray(enc.encode_texts([query]), np.float32)
        args = enc.bundle.similarity_args
        terms = frame_scores(text, frame_embeds, sampled.mask[None], **args)
        result = _build(enc.bundle, query, path, Path(path).stem, sampled, terms, 0, patch_indices, args,
                        enc.backend_name, enc.backend("video").precision)
    finally:
        if own:
            enc.close()
    if out is not None:
        result.write(out)
    return result


def _index_row(index, video: str | os.PathLike) -> int:
    """The index row of a video given by id, file name or path."""
    ids = index.video_ids
    key = os.fspath(video)
    if key in ids:
        return ids.index(key)
    files = [v["file"] for v in index.meta["videos"]]
    if Path(key).name in files:
        return files.index(Path(key).name)
    raise ExplainError(f"{index.path}: no video {key!r} in the index ({len(ids)} videos; pass an id such as "
                       f"{ids[0]!r} or its file name)")


def explain_indexed(index, video: str | os.PathLike | int, query: str, out: str | os.PathLike | None = None, *,
                    bundle_dir=None, backend: str = "ort-cpu", encoder: Optional[BundleEncoder] = None,
                    text_embeds: Optional[np.ndarray] = None, text_column: int = 0,
                    rank: Optional[int] = None) -> Explanation:
    """Explain an indexed video for ``query`` from the index's frame embeddings (the ones search ranks).

    ``video``: row number, id or file name. The score is computed on the index block holding the
    video by the code ``search`` runs (``frame_scores`` over ``similarity``'s blocks), so it is
    the search's score to the last bit when the query embeddings are the search's:
    ``text_embeds`` [Nt, D] (column ``text_column`` is ``query``), as ``explain_search`` passes;
    by default the query is encoded alone. ``rank`` (1-based, the search's stable order) is
    computed over the whole index unless given. The video file is re-decoded for the
    thumbnails, the frame times and the graph's ``patch_indices`` (an index keeps no patches),
    and refused if it changed since indexing (its SHA-256 differs).
    """
    from .frame_similarity import similarity
    from .index import index_bundle

    _check_query(query)
    row = int(video) if isinstance(video, (int, np.integer)) else _index_row(index, video)
    entry = index.meta["videos"][row]
    path = str(index.video_path(row))
    if not Path(path).is_file():
        raise ExplainError(f"{path}: the video file of index entry {entry['id']!r} is missing (moved since "
                           f"`ts2net index`?)")
    if sha256_file(path) != entry["sha256"]:
        raise ExplainError(f"{path} changed since it was indexed (SHA-256 differs from {index.path}/index.json): "
                           "rebuild the index with `ts2net index` before explaining it")
    own = encoder is None
    enc = encoder or _open_encoder(index_bundle(index, bundle_dir), backend, index.meta["precision"], None)
    try:
        sampled = sample_bundle_video(enc.bundle, path)
        if not np.array_equal(np.asarray(index.frame_mask[row], np.int64), sampled.mask):
            raise ExplainError(f"{path}: decoding now gives {int(sampled.mask.sum())} frames but the index holds "
                               f"{int(np.count_nonzero(index.frame_mask[row]))}; rebuild the index")
        _, patch_indices = _encode_video(enc, sampled, path)
        if text_embeds is None:
            text_embeds, text_column = np.asarray(enc.encode_texts([query]), np.float32), 0
        args = index.similarity_args
        terms = frame_scores(text_embeds, index.frame_embeds, index.frame_mask, videos=[row], **args)
        result = _build(enc.bundle, query, path, entry["id"], sampled, terms, text_column, patch_indices, args,
                        enc.backend_name, index.meta["precision"])
        if rank is None:
            scores = similarity(text_embeds[text_column:text_column + 1], index.frame_embeds, index.frame_mask,
                                **args)[0]
            order = np.argsort(-scores, kind="stable")  # the order search ranks by
            rank = int(np.flatnonzero(order == row)[0]) + 1
    finally:
        if own:
            enc.close()
    result.rank = int(rank)
    result.index = {"path": str(index.path), "n_videos": len(index)}
    if out is not None:
        result.write(out)
    return result


def explain_search(index, results: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, bundle_dir=None,
                   backend: str = "auto", batch_size: int = 16) -> Path:
    """One explanation per returned video of ``search_index`` results, and ``out_dir/index.html``.

    The queries are encoded together with ``batch_size`` exactly as ``search_index`` encodes
    them (pass the same value), so every explanation's score is the search's. The page lists
    every query's ranked videos with their PNGs and links to the JSONs; it uses relative links
    only, so it opens from disk (or any static file server). Returns its path.
    """
    from .index import index_bundle, query_backend, query_encoder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    queries = [entry["query"] for entry in results]
    for q in queries:
        _check_query(q)
    sections = []
    bundle = index_bundle(index, bundle_dir)
    backend = query_backend(index, bundle, backend)
    with query_encoder(index, bundle, backend, batch_size) as enc:
        text = np.asarray(enc.encode_texts(queries), np.float32)
        for q, entry in enumerate(results):
            items = []
            for hit in entry["results"]:
                expl = explain_indexed(index, _index_row(index, hit["video_id"]), entry["query"], encoder=enc,
                                       text_embeds=text, text_column=q, rank=hit["rank"])
                png, js = expl.write(out, f"q{q + 1}-rank{hit['rank']:03d}-{_safe_name(expl.video_id)}")
                items.append((hit, expl, png.name, js.name))
            sections.append((entry["query"], items))
    page = out / "index.html"
    atomic_write_text(page, _html(index, sections))
    return page


def _html(index, sections) -> str:
    esc = html.escape
    parts = ["<!doctype html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>ts2net search explanations</title>",
             "<style>body{font-family:sans-serif;margin:1.5em;max-width:1600px}"
             "li{margin-bottom:2em}img{max-width:100%;border:1px solid #ccc}"
             ".meta{color:#555;font-size:90%}</style></head><body>",
             f"<h1>Search explanations</h1><p class=\"meta\">index {esc(str(index.path))} ({len(index)} videos, "
             f"bundle {esc(index.meta['bundle']['id'])}); scores are the logit-scaled TS2-Net similarity.</p>"]
    for query, items in sections:
        parts.append(f"<h2>&ldquo;{esc(query)}&rdquo;</h2><ol>")
        for hit, expl, png, js in items:
            parts.append(f"<li value=\"{hit['rank']}\"><p><b>{esc(expl.video_id)}</b> &middot; score "
                         f"{hit['score']:.4f} &middot; <a href=\"{esc(js)}\">numbers (JSON)</a> &middot; "
                         f"<span class=\"meta\">{esc(expl.video_path)}</span></p>"
                         f"<a href=\"{esc(png)}\"><img src=\"{esc(png)}\" alt=\"explanation of {esc(expl.video_id)}"
                         f"\"></a></li>")
        parts.append("</ol>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------

DPI = 100
COLUMNS = 6
# Layout in inches (multiples of 0.01, so the pixel size is exact): per frame a caption line, a
# square thumbnail and two bars; above, a title block; below, a legend line.
THUMB_IN = 2.2
PANEL_W_IN = 2.5
CAPTION_IN = 0.34
BARS_IN = 0.56
PANEL_GAP_IN = 0.18
TITLE_IN = 1.2
FOOTER_IN = 0.5
MARGIN_IN = 0.2
PANEL_H_IN = CAPTION_IN + THUMB_IN + BARS_IN + PANEL_GAP_IN


def _layout(n_slots: int) -> tuple[int, int]:
    cols = min(COLUMNS, max(n_slots, 1))
    return cols, math.ceil(max(n_slots, 1) / cols)


def figure_size_px(n_slots: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for a model with ``n_slots`` frame slots (max_frames)."""
    cols, rows = _layout(n_slots)
    width = 2 * MARGIN_IN + cols * PANEL_W_IN
    height = TITLE_IN + rows * PANEL_H_IN + FOOTER_IN
    return int(round(width * DPI)), int(round(height * DPI))


def _to_rgb(pixels: np.ndarray, mean, std) -> np.ndarray:
    """Normalised [3, S, S] graph input -> uint8 [S, S, 3]: exactly the crop the model saw."""
    x = pixels.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def render_png(expl: Explanation, path: str | os.PathLike) -> tuple[int, int]:
    """Draw ``expl`` into a PNG at ``path`` (atomically); returns its (width, height) in pixels."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(expl.frames)
    cols, rows = _layout(n)
    width_px, height_px = figure_size_px(n)
    fw, fh = width_px / DPI, height_px / DPI
    fig = plt.figure(figsize=(fw, fh), dpi=DPI)

    def rect(x_in, y_top_in, w_in, h_in):  # inches from the top-left -> figure fractions
        return [x_in / fw, 1 - (y_top_in + h_in) / fh, w_in / fw, h_in / fh]

    # ------------------------------------------------------------------ title
    sim = expl.similarity
    lines = textwrap.wrap(f"\u201c{expl.query}\u201d", 16 * cols + 10)
    query = "\n".join(lines[:2]) + (" \u2026" if len(lines) > 2 else "")
    rank = (f"   \u00b7   rank {expl.rank} of {expl.index['n_videos']} in the index"
            if expl.rank is not None and expl.index else "")
    fig.text(MARGIN_IN / fw, 1 - 0.12 / fh, query, ha="left", va="top", fontsize=13, weight="bold")
    below = 0.42 if len(lines) == 1 else 0.68
    fig.text(MARGIN_IN / fw, 1 - below / fh,
             f"score {expl.score:.4f}  (= {sim['logit_scale']:g} \u00d7 \u03a3 w_f s_f)   \u00b7   frame mask: "
             f"{sim['frame_mask_mode']}{rank}", ha="left", va="top", fontsize=11)
    real = sum(f.real for f in expl.frames)
    fig.text(MARGIN_IN / fw, 1 - (below + 0.27) / fh,
             f"{expl.video_id}  ({Path(expl.video_path).name}, {expl.fps:.3f} fps, {real} of {n} slots sampled)"
             f"   \u00b7   model {expl.bundle.get('model')}  bundle {expl.bundle['id']}   \u00b7   "
             f"{expl.backend} {expl.precision}", ha="left", va="top", fontsize=9, color="#444444")

    counted = [f for f in expl.frames if f.counted]
    w_max = max((f.weight for f in expl.frames), default=0.0) or 1.0
    s_max = max((abs(f.cosine) for f in expl.frames if f.counted), default=0.0) or 1.0
    best = max(counted, key=lambda f: f.weight).slot if counted else None
    size = int(expl.grid["image_size"])
    patch = int(expl.grid["patch_size"])

    for f in expl.frames:
        r, c = divmod(f.slot, cols)
        x0 = MARGIN_IN + c * PANEL_W_IN + (PANEL_W_IN - THUMB_IN) / 2
        y0 = TITLE_IN + r * PANEL_H_IN
        ax = fig.add_axes(rect(x0, y0 + CAPTION_IN, THUMB_IN, THUMB_IN))
        ax.set_xticks([])
        ax.set_yticks([])
        if f.real:
            caption = f"#{f.slot}  t = {f.time_s:.2f} s  (frame {f.frame_number})"
            ax.imshow(_to_rgb(expl.pixels[f.slot], expl.mean, expl.std), extent=(0, size, size, 0),
                      interpolation="nearest")
            inset = patch * 0.06  # keeps outlines on the image's edge cells fully visible
            for p in f.patches:
                for colour, lw in (("black", 2.8), ("#ffe000", 1.4)):
                    ax.add_patch(Rectangle((p.col * patch + inset, p.row * patch + inset), patch - 2 * inset,
                                           patch - 2 * inset, fill=False, edgecolor=colour, linewidth=lw))
            if not f.counted:
                ax.add_patch(Rectangle((0, 0), size, size, facecolor="white", alpha=0.55, edgecolor="none"))
                ax.text(size / 2, size / 2, "not counted\n(official frame mask)", ha="center", va="center",
                        fontsize=9, color="#a00000", weight="bold")
        else:
            caption = f"#{f.slot}  padding"
            ax.set_facecolor("#eeeeee")
            ax.add_patch(Rectangle((0, 0), size, size, fill=False, hatch="//", edgecolor="#bbbbbb",
                                   linewidth=0))
            note = "padding slot\n(no frame)" + ("\ncounted by the\nofficial frame mask" if f.counted else "")
            ax.text(size / 2, size / 2, note, ha="center", va="center", fontsize=9, color="#555555")
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        for spine in ax.spines.values():
            spine.set_edgecolor("#1f77b4" if f.slot == best else "#999999")
            spine.set_linewidth(3 if f.slot == best else 0.8)
        fig.text((x0 + THUMB_IN / 2) / fw, 1 - (y0 + CAPTION_IN - 0.06) / fh, caption, ha="center",
                 va="bottom", fontsize=9, weight="bold" if f.slot == best else "normal")

        # bars: w_f on [0, max w] (one scale for all frames), s_f on [-max|s|, max|s|]
        bx = fig.add_axes(rect(x0, y0 + CAPTION_IN + THUMB_IN + 0.05, THUMB_IN, BARS_IN - 0.08))
        bx.set_xlim(0, 1)
        bx.set_ylim(-0.5, 1.5)
        bx.axis("off")
        if not (f.real or f.counted):  # a padding slot outside the mask: its numbers mean nothing
            bx.text(0.5, 0.5, "no weight (padding)", ha="center", va="center", fontsize=9, color="#777777")
            continue
        bx.barh(1, f.weight / w_max * 0.62, left=0.0, height=0.75, color="#1f77b4" if f.counted else "#cccccc")
        bx.text(0.64, 1, f"w {f.weight:.3f}", va="center", fontsize=9)
        half = 0.31
        bx.plot([half, half], [-0.45, 0.45], color="#888888", linewidth=0.8)
        length = f.cosine / s_max * half
        bx.barh(0, length, left=half, height=0.75,
                color=("#ff7f0e" if f.cosine >= 0 else "#d62728") if f.counted else "#cccccc")
        bx.text(0.64, 0, f"s {f.cosine:+.3f}", va="center", fontsize=9)

    k = expl.grid.get("top_k")
    selection = (f"yellow boxes: the {k} patch tokens the token selector kept in each frame "
                 f"({expl.grid['rows']}x{expl.grid['cols']} grid of {patch}-px patches on the {size}-px crop the "
                 "model sees); each frame's CLS token is always kept too" if k else
                 "this model keeps only each frame's CLS token (no token selection)")
    fig.text(MARGIN_IN / fw, FOOTER_IN * 0.72 / fh, selection, ha="left", va="center", fontsize=9)
    fig.text(MARGIN_IN / fw, FOOTER_IN * 0.28 / fh,
             f"bars: w = frame weight (softmax over the counted frames, sums to 1; bar scale: largest w), "
             f"s = cosine of frame and query (bar scale: \u00b1 largest |s|); blue frame: the largest weight",
             ha="left", va="center", fontsize=9)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue(), fsync=False)
    return width_px, height_px
