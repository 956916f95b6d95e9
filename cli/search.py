"""`ts2net bench-search` (thin wrapper over runtime.search.bench)."""
from __future__ import annotations

from pathlib import Path

import click

from cli.errors import CommandError
from runtime.search.bench import ENGINE_SPECS, run_bench, run_real


@click.command("bench-search")
@click.option("--sizes", default="10000,100000", show_default=True, help="Collection sizes N (comma-separated).")
@click.option("--engines", default="scan,faiss-exact,faiss,milvus", show_default=True,
              help=f"Engines to measure, from: {', '.join(ENGINE_SPECS)}.")
@click.option("--out", default="reports/search", show_default=True, type=click.Path(file_okay=False))
@click.option("--work", default="data/bench-search", show_default=True, type=click.Path(file_okay=False),
              help="Scratch folder for the synthetic collections (N=100k: 1.2 GB).")
@click.option("--frames", default=12, show_default=True, type=click.IntRange(1, 256))
@click.option("--dim", default=512, show_default=True, type=click.IntRange(1))
@click.option("--queries", default=200, show_default=True, type=click.IntRange(1))
@click.option("--latency-queries", "lat1", default=50, show_default=True, type=click.IntRange(1),
              help="Single-query latency samples (the scan takes fewer at large N).")
@click.option("--latency-batches", "lat32", default=4, show_default=True, type=click.IntRange(1),
              help="Batch-32 latency samples.")
@click.option("--seed", default=0, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the synthetic collections in --work.")
@click.option("--no-progress", is_flag=True)
@click.option("--real-index", type=click.Path(exists=True, file_okay=False), default=None,
              help="Instead of synthetic data: an index from `ts2net index`, searched with every caption of "
                   "--captions (top-10 agreement with the scan; writes real-agreement.json/.md).")
@click.option("--captions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --real-index: a 1k-A CSV or caption JSONL (runtime.datasets formats).")
def bench_search_command(sizes, engines, out, work, frames, dim, queries, lat1, lat32, seed, keep, no_progress,
                         real_index, captions):
    """Search engines on seeded synthetic collections: build, memory, latency, recall vs scan."""
    from runtime.search import EngineUnavailable

    names = [e.strip() for e in engines.split(",") if e.strip()]
    bad = [e for e in names if e not in ENGINE_SPECS]
    if bad:
        raise CommandError(f"--engines: unknown {', '.join(bad)}; choose from {', '.join(ENGINE_SPECS)}")
    try:
        n = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    if real_index or captions:
        if not (real_index and captions):
            raise CommandError("--real-index and --captions go together")
        try:
            run_real(real_index, captions, names, out, work, lat1=lat1, progress=not no_progress)
        except (EngineUnavailable, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        click.echo(f"wrote {Path(out) / 'real-agreement.md'} and .json")
        return
    try:
        run_bench(n, names, out, work, frames=frames, dim=dim, queries=queries, lat1=lat1, lat32=lat32, seed=seed,
                  keep=keep, progress=not no_progress)
    except EngineUnavailable as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"wrote {Path(out) / 'bench-search.md'}, .json and .png")
