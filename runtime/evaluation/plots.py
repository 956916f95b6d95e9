"""The recall@K chart of an evaluation (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .ranking import LABELS


def plot_recall(path: Path, rank_sets, subset_results, rs, title: str) -> None:
    """Recall@K for every K (a CDF of the ranks): shows the whole distribution, not 4 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = 2 if subset_results else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    styles = {"t2v": ("C0", "-"), "v2t": ("C1", "-"), "t2v_dsl": ("C0", "--"), "v2t_dsl": ("C1", "--")}

    n_videos, n_texts = len(rs.video_ids), len(rs.captions)
    candidates = {"t2v": n_videos, "t2v_dsl": n_videos, "v2t": n_texts, "v2t_dsl": n_texts}

    def curve(ax, r, n_cand, label, color, style):
        k = np.arange(1, max(n_cand, 2) + 1)
        recall = 100.0 * np.searchsorted(np.sort(np.asarray(r)), k, side="right") / np.asarray(r).size
        ax.step(k, recall, where="post", color=color, linestyle=style, label=label)

    ax = axes[0, 0]
    for name, r in rank_sets.items():
        color, style = styles[name]
        curve(ax, r, candidates[name], f"{LABELS[name]} (R@1 {100.0 * np.mean(r <= 1):.1f})", color, style)
    ax.set_title(f"all queries — {title}", fontsize=10)
    if subset_results:
        ax2 = axes[0, 1]
        cv = rs.caption_video
        position = {v: i for i, v in enumerate(rs.video_ids)}
        for i, (name, entry) in enumerate(subset_results.items()):
            if not entry.get("n_captions"):
                continue
            videos = [position[v] for v in rs.subsets.groups[name]]
            rows = np.flatnonzero(np.isin(cv, videos))
            curve(ax2, rank_sets["t2v"][rows], n_videos, f"{name} t2v (n={rows.size})", f"C{i + 2}", "-")
            curve(ax2, rank_sets["t2v_dsl"][rows], n_videos, f"{name} t2v DSL", f"C{i + 2}", "--")
        curve(ax2, rank_sets["t2v"], n_videos, "all t2v", "C0", ":")
        ax2.set_title("hard subsets (candidates: all videos)", fontsize=10)
    right = max(n_videos, n_texts, 2)
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlim(1, right)
        ax.set_xlabel("K")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if right <= 20 else ""))
        ax.set_ylabel("recall@K (%)")
        ax.set_ylim(0, 101)
        for k in (1, 5, 10, 50):
            if k <= right:
                ax.axvline(k, color="0.85", linewidth=0.8, zorder=0)
        ax.grid(True, which="major", axis="y", color="0.9")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
