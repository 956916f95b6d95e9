"""Hard-pair accuracy by change type during training (`--track-pairs-every N`).

Why: the demo model's overall retrieval hides what it has not learnt. A hard pair is two clips of
one scene that differ in exactly one thing, and the benchmark records what (`subsets.json`
"pair_change", e.g. ``"motion of object 0: up vs down"``). Scoring each pair's captions against
their own clip and the partner, per kind of difference, shows which words the model reads (colour
and presence are learnt early; direction and shape sit at chance on a plateau) and whether a
training lever moves them, step by step rather than only at the end.

The change types: ``colour``, ``presence``, ``shape`` (small-object pairs) and ``translation``
(left/right, up/down) and ``grow/shrink`` (motion pairs); synthbench's scene module says which
motions are translations. The score is the exported model's: the model's own encoders (eval
mode, hard top-K) and `runtime.similarity`, and the accuracy is `runtime.evaluation`'s
`pair_accuracy` (a caption wins when its own clip scores strictly above the partner); chance is 50 %.
Alongside, the median 1 - cos between the two text embeddings of a pair's corresponding
captions: a text tower that ignores the differing word drives it to 0.

Written to RUN/pair_tracking.jsonl (one line per tracking step: {"step", "epoch", "train": {...},
"test": {...}}) and drawn to RUN/pair_tracking.png.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from runtime.evaluation.ranking import pair_accuracy
from runtime.files import atomic_write_text
from runtime.frame_similarity import similarity
from synthbench.scene import OPPOSITE, TRANSLATIONS
from ts2net.model import TS2Net
from .frame_cache import CaptionedSplit, FrameCache

TRACK_NAME, PLOT_NAME = "pair_tracking.jsonl", "pair_tracking.png"
CHANGE_TYPES = ("colour", "presence", "shape", "translation", "grow/shrink")


def change_type(pair_change: str) -> str:
    """``"motion of object 0: up vs down"`` -> ``"translation"``; ``"colour of object 1: red vs blue"`` -> ``"colour"``."""
    kind, _, rest = pair_change.partition(" of object ")
    if kind in ("colour", "presence", "shape"):
        return kind
    if kind == "motion":
        value = rest.partition(": ")[2].partition(" vs ")[0]
        if value in TRANSLATIONS:
            return "translation"
        if value in OPPOSITE:
            return "grow/shrink"
    raise ValueError(f"subsets.json pair_change {pair_change!r}: not a change synthbench makes "
                     f"(expected one of {', '.join(CHANGE_TYPES)})")


def select_pairs(split: CaptionedSplit, pair_change: dict[str, str], max_pairs: int) -> list[tuple[int, int]]:
    """Up to `max_pairs` hard pairs (a < b) of the split, round-robin over change types, each type in split order."""
    by_type: dict[str, list[tuple[int, int]]] = {}
    for i, j in enumerate(split.partner):
        if 0 <= i < j:
            vid = split.video_ids[i]
            if vid not in pair_change:
                raise ValueError(f"subsets.json: hard pair {vid} has no 'pair_change' entry (regenerate the benchmark)")
            by_type.setdefault(change_type(pair_change[vid]), []).append((i, int(j)))
    queues = [by_type[k] for k in CHANGE_TYPES if k in by_type]
    chosen: list[tuple[int, int]] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        chosen += [q[rank] for q in queues if rank < len(q)]
    return sorted(chosen[:max_pairs])


class TrackedPairs:
    """The hard pairs of one split to score: their clips, captions and change types.

    At most `max_pairs` pairs, so the cost of a tracking step is bounded on a large split, taken
    round-robin over the change types in split order (deterministic): the generator lays all motion
    pairs out first, and a plain prefix would track no small-object pair at all.
    """

    def __init__(self, split: CaptionedSplit, cache: FrameCache, pair_change: dict[str, str], max_pairs: int):
        pairs = select_pairs(split, pair_change, max_pairs)
        if not pairs:
            raise ValueError(f"split {split.name!r} has no hard pairs to track")
        self.name = split.name
        self.videos = [v for pair in pairs for v in pair]              # split video indices, pair members adjacent
        self.video_ids = [split.video_ids[v] for v in self.videos]
        self.partner_of = {self.video_ids[2 * k]: self.video_ids[2 * k + 1] for k in range(len(pairs))}
        self.partner_of.update({b: a for a, b in list(self.partner_of.items())})
        self.types = [change_type(pair_change[vid]) for vid in self.video_ids]
        by_video = split.captions_of_video
        self.caption_rows = np.concatenate([by_video[v] for v in self.videos])   # rows of split.tokens
        self.caption_video = np.concatenate([np.full(len(by_video[v]), k) for k, v in enumerate(self.videos)])
        self.tokens = torch.from_numpy(split.tokens[self.caption_rows])
        rows, self.masks = cache.rows_of(self.video_ids)
        self.cache, self.rows = cache, rows
        # corresponding captions of a pair (same variant index): (row a, row b) in self.tokens order
        start = np.concatenate([[0], np.cumsum([len(by_video[v]) for v in self.videos])])
        self.caption_pairs = [(start[2 * k] + c, start[2 * k + 1] + c, self.types[2 * k])
                              for k in range(len(pairs))
                              for c in range(min(len(by_video[pairs[k][0]]), len(by_video[pairs[k][1]])))]

    @torch.no_grad()
    def score(self, model: TS2Net, batch_size: int = 32) -> dict[str, Any]:
        """Pair accuracy (all and per change type) and the pair captions' median 1 - cos."""
        was_training = model.training
        model.eval()
        try:
            frame_embeds = []
            for lo in range(0, len(self.rows), batch_size):
                frames = torch.from_numpy(np.asarray(self.cache.frames()[self.rows[lo:lo + batch_size]],
                                                     dtype=np.float32))
                mask = torch.from_numpy(self.masks[lo:lo + batch_size])
                frame_embeds.append(model.encode_video(frames, mask)[0])
            text = torch.cat([model.encode_text(self.tokens[i:i + batch_size])
                              for i in range(0, len(self.tokens), batch_size)])
            logit_scale = float(model.clip.logit_scale.exp())
        finally:
            model.train(was_training)
        cfg = model.cfg
        text_np = text.float().numpy()
        sim = similarity(text_np, torch.cat(frame_embeds).float().numpy(), self.masks, logit_scale,
                         cfg.frame_mask_mode, tokens_per_frame=cfg.tokens_per_frame,
                         softmax_factor=cfg.frame_softmax_factor)
        unit = text_np / np.linalg.norm(text_np, axis=1, keepdims=True)
        out: dict[str, Any] = {"all": self._entry(sim, None, unit, None)}
        caption_type = np.array([self.types[k] for k in self.caption_video])
        for kind in CHANGE_TYPES:
            rows = np.flatnonzero(caption_type == kind)
            if rows.size:
                out[kind] = self._entry(sim, rows, unit, kind)
        return out

    def _entry(self, sim: np.ndarray, rows, unit: np.ndarray, kind) -> dict[str, Any]:
        entry = dict(pair_accuracy(sim, self.caption_video, self.video_ids, self.partner_of, rows))
        gaps = [1.0 - float(unit[a] @ unit[b]) for a, b, t in self.caption_pairs if kind is None or t == kind]
        entry["caption_gap_median"] = float(np.median(gaps)) if gaps else None
        entry["n_pairs"] = sum(1 for k in range(0, len(self.types), 2) if kind is None or self.types[k] == kind)
        return entry


class PairTracker:
    """Scores the tracked splits every `every` steps, appends to RUN/pair_tracking.jsonl, redraws the PNG."""

    def __init__(self, out: Path, sets: Sequence[TrackedPairs], every: int, batch_size: int = 32):
        self.path, self.plot_path = out / TRACK_NAME, out / PLOT_NAME
        self.sets, self.every, self.batch_size = list(sets), int(every), batch_size

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def track(self, model: TS2Net, step: int, epoch: int, **extra: Any) -> dict[str, Any]:
        record = {"step": step, "epoch": epoch, **extra}
        record.update({s.name: s.score(model, self.batch_size) for s in self.sets})
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        plot_tracking(read_tracking(self.path), self.plot_path)
        return record


def read_tracking(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tracking_line(record: dict[str, Any]) -> str:
    """One console line: per split, pair accuracy by change type."""
    parts = []
    for name, value in record.items():
        if isinstance(value, dict) and "all" in value:
            kinds = " ".join(f"{k} {value[k]['accuracy']:.1f}" for k in CHANGE_TYPES if k in value)
            parts.append(f"{name} pairs {value['all']['accuracy']:.1f} ({kinds})")
    return "; ".join(parts)


def plot_tracking(records: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    """Pair accuracy by change type against step, one panel per tracked split (chance at 50 %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    splits = [k for k, v in records[0].items() if isinstance(v, dict) and "all" in v]
    fig, axes = plt.subplots(1, len(splits) + 1, figsize=(5.2 * (len(splits) + 1), 3.8), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, name in zip(axes[0], splits):
        for i, kind in enumerate(("all",) + CHANGE_TYPES):
            values = [r[name].get(kind, {}).get("accuracy") for r in records]
            if all(v is None for v in values):
                continue
            n = records[-1][name].get(kind, {}).get("n_pairs")
            ax.plot(steps, [np.nan if v is None else v for v in values], marker=".",
                    color="k" if kind == "all" else f"C{i - 1}", linewidth=2 if kind == "all" else 1.2,
                    label=f"{kind} ({n} pairs)")
        ax.axhline(50, color="0.6", linestyle=":", linewidth=1)
        ax.set_ylim(0, 101)
        ax.set_xlabel("step")
        ax.set_ylabel("pair accuracy (%)")
        ax.set_title(f"{name} pairs", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[0, -1]
    for i, name in enumerate(splits):
        gaps = [r[name]["all"].get("caption_gap_median") for r in records]
        ax.plot(steps, [np.nan if g is None else g for g in gaps], marker=".", color=f"C{i}", label=f"{name} pairs")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("median 1 - cos(pair captions)")
    ax.set_title("do the two captions of a pair differ?", fontsize=10)
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def trim_tracking(path: Path, step: int) -> None:
    """Drop tracking lines written after the checkpoint a resumed run restarts from."""
    kept = [r for r in read_tracking(path) if r["step"] <= step]
    if path.is_file():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------------------- comparing runs
def compare_runs(runs: dict[str, Path], out: Path) -> dict[str, Any]:
    """Side by side: each run's tracked pair accuracies (by split and change type), loss and caption
    gap at every tracked step. Writes OUT/comparison.json, comparison.md and comparison.png and copies
    each run's pair_tracking.jsonl / .png to OUT/NAME/ (the curves kept in reports/)."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, Any] = {}
    for name, run in runs.items():
        records = read_tracking(run / TRACK_NAME)
        if not records:
            raise ValueError(f"{run / TRACK_NAME}: no tracking records (was the run started with --track-pairs-every?)")
        log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
        losses = {r["step"]: r for r in log if "loss" in r}
        summary_path = run / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        table[name] = {"run": str(run), "finished": summary is not None,
                       "levers": summary.get("levers") if summary else None,
                       "steps_done": max(losses) if losses else 0,
                       "mean_step_s": float(np.mean([r["step_s"] for r in losses.values()])) if losses else None,
                       "points": [{"step": r["step"],
                                   # the batch contrastive loss (without the weighted pair term: comparable across runs)
                                   "loss": losses.get(r["step"], {}).get("clip_loss", losses.get(r["step"], {}).get("loss")),
                                   "pair_loss": losses.get(r["step"], {}).get("pair_loss"),
                                   **{s: {k: {"accuracy": v["accuracy"], "n_pairs": v["n_pairs"],
                                              "caption_gap_median": v["caption_gap_median"]}
                                          for k, v in r[s].items()}
                                      for s in r if isinstance(r[s], dict) and "all" in r[s]}}
                                  for r in records]}
        target = out / name
        target.mkdir(exist_ok=True)
        for f in (TRACK_NAME, PLOT_NAME, "train_log.jsonl"):
            if (run / f).is_file():
                shutil.copyfile(run / f, target / f)
    atomic_write_text(out / "comparison.json", json.dumps(table, indent=1) + "\n")
    atomic_write_text(out / "comparison.md", _comparison_markdown(table))
    _plot_comparison(table, out / "comparison.png")
    return table


def _comparison_markdown(table: dict[str, Any]) -> str:
    lines = ["| run | step | batch loss | " + " | ".join(f"{s} {k}" for s in ("train", "test") for k in ("all",) + CHANGE_TYPES)
             + " | train caption gap |", "|---" * (4 + 2 * (1 + len(CHANGE_TYPES))) + "|"]
    for name, entry in table.items():
        for p in entry["points"]:
            cells = []
            for s in ("train", "test"):
                for k in ("all",) + CHANGE_TYPES:
                    v = p.get(s, {}).get(k)
                    cells.append(f"{v['accuracy']:.1f}" if v else "")
            gap = p.get("train", {}).get("all", {}).get("caption_gap_median")
            loss = p["loss"]
            lines.append(f"| {name} | {p['step']} | {'' if loss is None else f'{loss:.3f}'} | " + " | ".join(cells)
                         + f" | {'' if gap is None else f'{gap:.2e}'} |")
    return "\n".join(lines) + "\n"


def _plot_comparison(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train", "all"), ("test", "translation"), ("test", "grow/shrink"), ("test", "shape")]
    fig, axes = plt.subplots(1, len(panels) + 2, figsize=(4.2 * (len(panels) + 2), 3.6))
    for i, (name, entry) in enumerate(table.items()):
        steps = [p["step"] for p in entry["points"]]
        for ax, (split, kind) in zip(axes, panels):
            ax.plot(steps, [p.get(split, {}).get(kind, {}).get("accuracy", np.nan) for p in entry["points"]],
                    marker=".", color=f"C{i}", label=name)
        gaps = [p.get("train", {}).get("all", {}).get("caption_gap_median") for p in entry["points"]]
        axes[-2].plot(steps, [np.nan if g is None else g for g in gaps], marker=".", color=f"C{i}", label=name)
        log = [json.loads(line) for line in (Path(entry["run"]) / "train_log.jsonl").read_text().splitlines()
               if line.strip() and "loss" in json.loads(line)]
        if log:
            axes[-1].plot([r["step"] for r in log], [r.get("clip_loss", r["loss"]) for r in log], color=f"C{i}",
                          linewidth=0.8, label=name)
    for ax, (split, kind) in zip(axes, panels):
        n = next((p.get(split, {}).get(kind, {}).get("n_pairs") for e in table.values() for p in e["points"][-1:]), None)
        ax.axhline(50, color="0.6", linestyle=":", linewidth=1)
        ax.set_ylim(0, 101)
        ax.set_title(f"{split} pairs: {kind} ({n} pairs)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("pair accuracy (%)")
        ax.legend(fontsize=7)
    axes[-2].set_yscale("log")
    axes[-2].set_title("train pairs: median 1 - cos(captions)", fontsize=10)
    axes[-2].set_xlabel("step")
    axes[-1].axhline(np.log(2), color="0.6", linestyle=":", linewidth=1)
    axes[-1].set_title("batch contrastive loss (ln 2 dotted)", fontsize=10)
    axes[-1].set_xlabel("step")
    axes[-1].set_yscale("log")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """python -m ts2net.training.pair_tracking --out reports/demo-training NAME=RUN_DIR ..."""
    import argparse

    parser = argparse.ArgumentParser(description=compare_runs.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, run = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: expected NAME=RUN_DIR")
        runs[name] = Path(run)
    try:
        table = compare_runs(runs, args.out)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print((args.out / "comparison.md").read_text(), end="")
    print(f"{len(table)} runs compared in {args.out}")


if __name__ == "__main__":
    main()
