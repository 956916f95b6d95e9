"""`ts2net cpp-bench`: C++ (ts2net-cpp) vs Python decode + encode time per video (runtime.benchmark.cpp_compare)."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.benchmark.cpp_compare import CppBenchError, compare_encode
from runtime.bundle import BundleError
from runtime.datasets import AnnotationError
from runtime.video import VideoDecodeError


@click.command("cpp-bench")
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--csv", "annotations", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Annotation file (1k-A CSV or JSONL) whose videos are timed, in order.")
@click.option("--videos", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--first", default=100, show_default=True, type=click.IntRange(min=1), help="How many videos.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--cli", "binary", default=Path("cpp/build/ts2net-cpp"), show_default=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def cpp_bench_command(bundle, annotations, videos, first, batch, binary, out):
    """Write OUT/encode-timing.{json,md}: decode+preprocess and encode ms per video, C++ vs Python."""
    try:
        _, markdown = compare_encode(bundle, annotations, videos, out, first=first, batch=batch, cli=binary)
    except (CppBenchError, BundleError, AnnotationError, VideoDecodeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(markdown)
