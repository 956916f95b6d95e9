"""`ts2net index` and `ts2net search` (thin wrappers over runtime.index)."""
from __future__ import annotations

import json

import click

from cli.errors import CommandError
from runtime.index import DTYPES, build_index, open_index, query_warning, search_index, shorten


def _click_errors(action):
    from runtime.backends import BackendUnavailable
    from runtime.search import EngineUnavailable
    from runtime.video import VideoDecodeError

    try:
        return action()
    except VideoDecodeError as exc:
        raise CommandError(f"{exc}\n(pass --skip-bad to skip unreadable videos)") from exc
    except (ValueError, BackendUnavailable, EngineUnavailable) as exc:  # VideoIndexError, BundleError, AnnotationError, settings
        raise CommandError(str(exc)) from exc


@click.command("index")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Bundle directory (from `ts2net export`).")
@click.option("--videos", "videos_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of video files; the file name without extension is the video id.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Index directory to write.")
@click.option("--backend", default="auto", show_default=True,
              help="Inference backend (ort-cpu, ort-cuda, tensorrt, openvino); auto: the fastest path that passed "
                   "its gates on this machine (runtime/path_choice.py).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]), default="auto",
              show_default=True, help="auto: the fastest gated precision of the backend.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Storage type of frame embeddings (float16 halves the index; rankings barely move).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable videos (listed in index.json) instead of stopping.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Embedding cache root [default: $TS2NET_CACHE_DIR or ~/.cache/ts2net-deploy/embeddings].")
@click.option("--no-cache", is_flag=True, help="No embedding cache (an interrupted build then starts over).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Video decoding threads (0: decode in the main thread).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--engine", type=click.Choice(["scan", "faiss", "milvus"]), default=None,
              help="Search engine [default: the index's current one, scan for a new index]: scan scores every "
                   "video; faiss / milvus fetch frame candidates and re-rank them exactly (docs/search.md).")
@click.option("--exact", is_flag=True, help="faiss / milvus: a flat (exact) frame index; same top-k as scan.")
@click.option("--faiss-kind", type=click.Choice(["auto", "flat", "hnsw", "ivf"]), default="auto", show_default=True,
              help="faiss index type (auto: flat up to 50k frames, HNSW up to 500k, IVF beyond).")
@click.option("--milvus-uri", default=None,
              help="Milvus server, e.g. http://host:19530 [default: Milvus Lite file milvus.db in the index].")
@click.option("--milvus-collection", default=None, help="Milvus collection name [default: generated, recorded].")
@click.option("--server", default=None, metavar="URL",
              help="Encode through a Triton server (http://HOST:PORT or grpc://HOST:PORT) instead of --backend.")
def index_command(bundle_dir, videos_dir, out, backend, precision, dtype, skip_bad, batch_size, cache_dir, no_cache,
                  workers, no_progress, engine, exact, faiss_kind, milvus_uri, milvus_collection, server):
    """Encode every video in a folder into a search index (resumable; unchanged videos are not re-encoded)."""
    if server is None and backend == "auto" or backend in ("ort-cpu", "openvino") and precision == "auto":
        from runtime.bundle import open_bundle
        from runtime.path_choice import resolve

        backend, precision, why = _click_errors(lambda: resolve(open_bundle(bundle_dir, verify=False), backend,
                                                                precision))
        click.echo(f"encoding with {backend} {precision}: {why}", err=True)
    elif precision == "auto":  # TensorRT / CUDA / a server: the library's own default (the engine's precision)
        precision = None
    if backend == "auto":
        backend = "ort-cpu"  # with --server the backend is the server's; build_index ignores it
    meta = _click_errors(lambda: build_index(
        bundle_dir, videos_dir, out, backend=backend, precision=precision, skip_bad=skip_bad, batch_size=batch_size,
        cache_dir=False if no_cache else cache_dir, dtype=dtype, progress=not no_progress, workers=workers,
        server=server))
    b = meta["build"]
    click.echo(f"indexed {meta['n_videos']} videos into {out} ({b['encoded']} encoded, {b['from_cache']} from the "
               f"cache, {b['reused_from_index']} reused from the index; {b['seconds']:.1f} s)")
    for s in meta["skipped"]:
        click.echo(f"skipped {s['path']}: {s['reason']}")
    from runtime.search import sync_engine

    name = engine or meta["engine"]["name"]
    exact = exact or (engine is None and bool(meta["engine"].get("exact")) and name != "scan")  # keep what was built
    options = {k: v for k, v in (("faiss_kind", faiss_kind), ("milvus_uri", milvus_uri),
                                 ("milvus_collection", milvus_collection)) if v is not None}
    section = _click_errors(lambda: sync_engine(open_index(out), name, exact=exact, progress=not no_progress,
                                                **options))
    if name != "scan":
        click.echo(f"engine {name} ({section.get('kind') or section.get('index_type')}"
                   f"{', exact' if section['exact'] else ''}): {section['n_frames']} frames of {section['n_keys']} "
                   f"distinct videos ({section['build_seconds']:.1f} s)")


@click.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", nargs=-1, required=True)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--bundle", "bundle_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Bundle for the text side [default: the one recorded in the index].")
@click.option("--backend", default="auto", show_default=True,
              help="Backend for encoding the query (auto: the index's, if it passes its gates here, else the "
                   "fastest gated one of the index's precision).")
@click.option("--engine", type=click.Choice(["scan"]), default=None,
              help="Override the index's engine with a full scan (the ground truth).")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: a list of {"query", "engine", "results": [{"rank", "video_id", "score", "path"}], '
                   '"rescored", "stop_rule_met", "fallback_scan"}.')
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False), default=None,
              help="Also write an explanation (PNG + JSON) of every returned video and an index.html into this "
                   "folder (see `ts2net explain`).")
def search_command(index_dir, queries, k, bundle_dir, backend, engine, as_json, explain_dir):
    """Rank the indexed videos for a text query (scores: logit-scaled TS2-Net similarity)."""
    def run():
        return search_index(open_index(index_dir), list(queries), k, bundle_dir=bundle_dir, backend=backend,
                            engine=engine)

    results = _click_errors(run)
    for number, query in enumerate(queries, start=1):
        if query_warning(query):
            click.echo(f"warning: query {number}: {query_warning(query)}", err=True)
    _print_results(results, as_json)
    if explain_dir is not None:
        from cli.explain import explain_errors
        from runtime.explanation import explain_search

        page = explain_errors(lambda: explain_search(open_index(index_dir), results, explain_dir,
                                                    bundle_dir=bundle_dir, backend=backend))
        click.echo(f"explanations: {page}", err=True)


def _print_results(results, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(results, indent=1, allow_nan=False))  # always a list, one entry per query
        return
    for i, entry in enumerate(results):
        if i:
            click.echo("")
        note = "" if entry["engine"] == "scan" else (
            f"  [{entry['engine']}: {entry['rescored']} re-scored, stop rule "
            f"{'met' if entry['stop_rule_met'] else 'not met: full re-score'}]")
        click.echo(f"query: {shorten(entry['query'])}{note}")
        width = max(len(r["video_id"]) for r in entry["results"])
        for r in entry["results"]:
            click.echo(f"{r['rank']:>4}  {r['score']:9.4f}  {r['video_id']:<{width}}  {r['path']}")
