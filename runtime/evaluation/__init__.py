"""`ts2net eval` as a library: text-video retrieval evaluation of a bundle (MSR-VTT 1k-A style).

    ranking   ranks, DSL, metric blocks, hard subsets, pair accuracy (and the conventions behind them)
    evaluate  `evaluate`: encode (with the embedding cache), score, rank, write the report
    report    the Markdown report and the printed summary
    plots     the recall@K chart

No click here: errors are AnnotationError, BundleError, VideoDecodeError, BackendUnavailable or
ValueError, which the command line (cli/evaluate.py) turns into messages.
"""
from .evaluate import DEFAULT_OUT, evaluate
from .ranking import CONVENTIONS, DIRECTIONS
from .report import metrics_table, render_markdown, summary_text

__all__ = ["CONVENTIONS", "DEFAULT_OUT", "DIRECTIONS", "evaluate", "metrics_table", "render_markdown", "summary_text"]
