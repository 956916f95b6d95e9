"""`ts2net eval` (thin wrapper over runtime.evaluation)."""
from __future__ import annotations

import click

from cli.errors import CommandError
from runtime.evaluation import DEFAULT_OUT, evaluate, summary_text
from runtime.metrics import V2T_CANDIDATES


@click.command("eval")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Bundle directory (from `ts2net export`).")
@click.option("--csv", "annotations", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Annotations: MSRVTT_JSFUSION_test.csv, a CSV (video_id, caption) or a JSONL file.")
@click.option("--videos", "videos_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of {video_id}.mp4 files.")
@click.option("--backend", default="ort-cpu", show_default=True, help="Inference backend (ort-cpu, ort-cuda, tensorrt).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="Graph precision for ONNX Runtime (default fp32: the reference numbers; int8 too), fp32 / bf16 / "
                   "int8 for --backend openvino; TensorRT runs its engine's precision.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(DEFAULT_OUT), show_default=True,
              help="Report folder (JSON + Markdown + PNG).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Embedding cache root [default: $TS2NET_CACHE_DIR or ~/.cache/ts2net-deploy/embeddings].")
@click.option("--no-cache", is_flag=True, help="Encode everything; read and write no cache.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable videos (listed in the report, captions removed).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--subsets", "subsets_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Hard subsets JSON [default: subsets.json beside --csv, if present].")
@click.option("--v2t-candidates", type=click.Choice(list(V2T_CANDIDATES)), default="captions", show_default=True,
              help="Video-to-text convention with several captions per video.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Video decoding threads (0: decode in the main thread).")
@click.option("--save-sim", is_flag=True, help="Also write the similarity matrix as {report}-sim.npy.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def eval_command(bundle_dir, annotations, videos_dir, backend, precision, out_dir, cache_dir, no_cache, skip_bad,
                 batch_size, subsets_file, v2t_candidates, workers, save_sim, no_progress):
    """Text-to-video and video-to-text retrieval metrics (R@1/5/10/50, MdR, MnR, DSL) of a bundle."""
    from runtime.backends import BackendUnavailable
    from runtime.video import VideoDecodeError

    try:
        data = evaluate(bundle_dir, annotations, videos_dir, backend=backend, precision=precision,
                        out_dir=out_dir, cache_dir=False if no_cache else cache_dir, skip_bad=skip_bad,
                        batch_size=batch_size, subsets=subsets_file, v2t_candidates=v2t_candidates,
                        progress=not no_progress, save_similarity=save_sim, workers=workers)
    except VideoDecodeError as exc:
        raise CommandError(f"{exc}\n(pass --skip-bad to skip unreadable videos; they are listed in "
                                   "the report and their captions removed)") from exc
    except (ValueError, BackendUnavailable) as exc:  # AnnotationError, BundleError, bad settings, no video left
        raise CommandError(str(exc)) from exc
    click.echo(summary_text(data))
