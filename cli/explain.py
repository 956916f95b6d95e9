"""`ts2net explain`: one PNG + one JSON saying why a video scored what it did for a query."""
from __future__ import annotations

import click

from cli.errors import CommandError
from runtime.explanation import explain, explain_indexed
from runtime.index import open_index


def explain_errors(action):
    """Run ``action``, turning every expected failure into a one-line error (exit code 1)."""
    from runtime.backends import BackendUnavailable
    from runtime.video import VideoDecodeError

    try:
        return action()
    except (VideoDecodeError, ValueError, BackendUnavailable) as exc:  # ExplainError, BundleError, VideoIndexError
        raise CommandError(str(exc)) from exc


@click.command("explain")
@click.argument("video")
@click.argument("query")
@click.option("--bundle", "bundle_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Bundle directory (from `ts2net export`); with --index, the one recorded there by default.")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Take the video's frame embeddings from this index (VIDEO: its id or file name), so the score "
                   "and rank are the ones `ts2net search` gives.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for <video>--<query>.png and .json.")
@click.option("--backend", default="ort-cpu", show_default=True,
              help="Inference backend (any the runtime has: ort-cpu, ort-cuda, tensorrt, ...).")
@click.option("--precision", default=None,
              help="Graph precision (fp32, fp16, ...) [default: the backend's; with --index, the index's].")
def explain_command(video, query, bundle_dir, index_dir, out_dir, backend, precision):
    """Explain a video's score for a text query: frame weights, cosines and the selected patches."""
    def run():
        if index_dir is None:
            if bundle_dir is None:
                raise click.UsageError("pass --bundle (or --index to explain an indexed video)")
            return explain(bundle_dir, video, query, backend=backend, precision=precision)
        index = open_index(index_dir)
        if precision is not None and precision != index.meta["precision"]:
            raise click.UsageError(f"--precision {precision}: the index was encoded at {index.meta['precision']}; "
                                   "explanations from an index use its precision")
        return explain_indexed(index, video, query, bundle_dir=bundle_dir, backend=backend)

    result = explain_errors(run)
    png, js = explain_errors(lambda: result.write(out_dir))
    rank = f"  (rank {result.rank} of {result.index['n_videos']})" if result.rank is not None else ""
    counted = [f for f in result.frames if f.counted]
    top = max(counted, key=lambda f: f.weight)
    when = f"{top.time_s:.2f} s" if top.time_s is not None else "a padding slot"
    click.echo(f"score {result.score:.4f}{rank}; largest frame weight {top.weight:.3f} at slot {top.slot} ({when})")
    click.echo(f"wrote {png}")
    click.echo(f"wrote {js}")
