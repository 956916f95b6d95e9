"""`ts2net bench-search`: build time, memory, latency and recall of each search engine vs the scan.

For each collection size N a seeded synthetic collection (:mod:`runtime.search.synthetic`) is
written once; every engine gets its own index directory whose arrays are hard links to it. The
ground truth is the scan's top-100 of every query. Measured per engine:

* build: ``sync_engine`` seconds (the arrays exist already: this is the engine's own cost) and
  the bytes of its files (Milvus Lite: the .db folder);
* memory: resident-set growth of this process and its children (Milvus Lite's server) once the
  engine is opened for search;
* latency: batch 1 (queries one at a time, k=10) and batch 32, p50 / p95 in ms per batch;
* recall@10 / @100 against the scan, the share of queries whose top-10 is identical (same videos,
  same order), exact re-scores per query, the share that met the stop rule (the rest re-scored
  every unseen video) -- all from the same queries.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..reports import environment, environment_markdown, write_report
from . import Hits, Searcher, sync_engine
from .synthetic import SyntheticSpec, synthetic_queries, write_synthetic_index

def _say(message: str, err: bool = True) -> None:
    """Progress lines on stderr (the command layer owns stdout)."""
    print(message, file=sys.stderr, flush=True)


ENGINE_SPECS = {"scan": ("scan", {}), "faiss-exact": ("faiss", {"exact": True}), "faiss": ("faiss", {}),
                "faiss-hnsw": ("faiss", {"faiss_kind": "hnsw"}), "faiss-ivf": ("faiss", {"faiss_kind": "ivf"}),
                "milvus": ("milvus", {}), "milvus-exact": ("milvus", {"exact": True})}


def _rss_tree() -> int:
    """Resident bytes of this process and all its descendants (Linux /proc)."""
    page = os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(stat[1]), []).append(int(d.name))
            rss[int(d.name)] = int(stat[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": int(a.size)}


def _engine_dir(base: Path, name: str) -> Path:
    """A fresh index directory for one engine sharing the collection's arrays (hard links)."""
    d = base / f"engine-{name}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in ("frame_embeds.synthetic.npy", "frame_mask.synthetic.npy", "index.json"):
        if f == "index.json":
            shutil.copy2(base / f, d / f)
        else:
            os.link(base / f, d / f)
    meta = json.loads((d / "index.json").read_text())
    meta["videos_dir"] = str(d / "videos")
    (d / "index.json").write_text(json.dumps(meta))
    return d


def _overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return len(set(a[:k].tolist()) & set(b[:k].tolist())) / max(1, min(k, len(b)))


def bench_engine(name: str, base: Path, text: np.ndarray, truth: list, *, lat1: int, lat32: int,
                 progress: bool) -> dict[str, Any]:
    from ..index import open_index

    d = _engine_dir(base, name)
    row = bench_engine_on(name, d, text, truth, lat1=lat1, lat32=lat32, progress=progress)
    row.pop("hits10")
    if name != "scan":
        shutil.rmtree(d, ignore_errors=True)
    return row


def bench_engine_on(name: str, d: Path, text: np.ndarray, truth: list, *, lat1: int, lat32: int = 4,
                    progress: bool = True) -> dict[str, Any]:
    """Build engine ``name`` in the index directory ``d`` and measure it (see the module docstring)."""
    from ..index import open_index

    engine, options = ENGINE_SPECS[name]
    index = open_index(d)
    arrays = {index.meta["arrays"]["frame_embeds"], index.meta["arrays"]["frame_mask"], "index.json"}
    rss0 = _rss_tree()
    t0 = time.perf_counter()
    section = sync_engine(index, engine, progress=progress, **options)
    build_s = time.perf_counter() - t0
    rss_build = _rss_tree()
    searcher = Searcher(open_index(d))
    searcher.search(text[:1], 10)                       # warm-up: loads the collection / pages
    rss_search = _rss_tree()
    one = [searcher_time(searcher, text[i:i + 1], 10)[0] for i in range(min(lat1, len(text)))]
    batches, hits10 = [], []
    for a in range(0, min(lat32 * 32, len(text)), 32):
        ms, h = searcher_time(searcher, text[a:a + 32], 10)
        batches.append(ms)
        hits10.extend(h)
    if engine == "scan":   # the ground truth is the scan's own answer: timing only, no second full pass
        hits10 = [Hits(t.rows[:10], t.scores[:10], t.stats) for t in truth]
        hits100 = truth
    else:
        rest = [searcher.search(text[a:a + 32], 10) for a in range(len(hits10), len(text), 32)]
        hits10.extend(h for r in rest for h in r)
        hits100 = [h for a in range(0, len(text), 32) for h in searcher.search(text[a:a + 32], 100)]
    searcher.close()
    files = _dir_bytes(d) - sum((d / f).stat().st_size for f in arrays)
    row = {"engine": name, "kind": section.get("kind") or section.get("index_type") or "scan",
           "params": section.get("params", {}), "build_s": build_s, "engine_bytes": files,
           "rss_build_growth_bytes": max(0, rss_build - rss0), "rss_search_growth_bytes": max(0, rss_search - rss0),
           "batch1": _percentiles(one), "batch32": _percentiles(batches),
           "recall@10": float(np.mean([_overlap(h.rows, t.rows, 10) for h, t in zip(hits10, truth)])),
           "recall@100": float(np.mean([_overlap(h.rows, t.rows, 100) for h, t in zip(hits100, truth)])),
           "identical_top10": float(np.mean([np.array_equal(h.rows, t.rows[:10]) for h, t in zip(hits10, truth)])),
           "rescored_per_query_k10": float(np.mean([h.stats.rescored for h in hits10])),
           "rescored_p95_k10": float(np.percentile([h.stats.rescored for h in hits10], 95)),
           "rescored_per_query_k100": float(np.mean([h.stats.rescored for h in hits100])),
           "stop_rule_met_k10": float(np.mean([h.stats.stop_rule_met for h in hits10])),
           "fallback_k10": int(sum(h.stats.fallback for h in hits10)),
           "grouped_frames": section.get("grouped_frames", 0), "n_frames_in_engine": section.get("n_frames"),
           "hits10": hits10}
    if engine == "milvus":
        from .milvus_engine import close_all

        close_all()
    return row


def searcher_time(searcher, text, k):
    t = time.perf_counter()
    hits = searcher.search(text, k)
    return (time.perf_counter() - t) * 1000.0, hits


def run_bench(sizes, engines, out, work, *, frames=12, dim=512, queries=200, lat1=50, lat32=4, seed=0,
              keep=False, progress=True) -> dict[str, Any]:
    from ..index import open_index

    work, out = Path(work), Path(out)
    results: dict[str, Any] = {"uptime_start": _uptime(), "sizes": list(sizes), "engines": list(engines),
                               "frames": frames, "dim": dim, "queries": queries, "seed": seed, "runs": []}
    previous = out / "bench-search.json"
    if previous.is_file():   # runs of other sizes from an earlier invocation stay in the report
        old = json.loads(previous.read_text())
        if (old.get("frames"), old.get("dim"), old.get("seed")) == (frames, dim, seed):
            results["runs"] = old.get("runs", [])
            for r in results["runs"]:     # runs written before these fields existed: the invocation's value
                r.setdefault("queries", old.get("queries"))
            results["engines"] = list(dict.fromkeys(old.get("engines", []) + list(engines)))
            results["uptime_start"] = old.get("uptime_start", results["uptime_start"])
    for n in sizes:
        spec = SyntheticSpec(n_videos=n, frames=frames, dim=dim, seed=seed)
        base = work / f"n{n}"
        t0 = time.perf_counter()
        if not (base / "index.json").is_file():
            shutil.rmtree(base, ignore_errors=True)
            write_synthetic_index(base, spec, progress=progress)
        gen_s = time.perf_counter() - t0
        text, _ = synthetic_queries(spec, queries)
        t0 = time.perf_counter()
        truth = Searcher(open_index(base)).search(text, 100)
        truth_s = time.perf_counter() - t0
        # an earlier run of this size keeps the engines not measured now (same seed: same data and queries)
        earlier = next((r for r in results["runs"] if r["n_videos"] == n), None)
        kept = [e for e in (earlier or {}).get("engines", []) if e["engine"] not in engines]
        results["runs"] = [r for r in results["runs"] if r["n_videos"] != n]
        run = {"n_videos": n, "spec": spec.__dict__ | {"similarity": dict(spec.similarity)}, "generate_s": gen_s,
               "queries": queries, "latency_queries": lat1, "latency_batches": lat32,
               "arrays_bytes": _dir_bytes(base) - (base / "index.json").stat().st_size,
               "ground_truth_s": truth_s, "uptime": _uptime(), "engines": kept}
        results["runs"].append(run)
        results["runs"].sort(key=lambda r: r["n_videos"])
        for name in engines:
            # the scan is slow per query: fewer latency samples (its spread is small)
            l1, l32 = (min(lat1, max(5, 500_000 // n)), min(lat32, 2)) if name == "scan" else (lat1, lat32)
            _say(f"N={n}: {name} ...", err=True)
            row = bench_engine(name, base, text, truth, lat1=l1, lat32=l32, progress=progress)
            row["uptime"] = _uptime()
            run["engines"].append(row)
            _write(results, out)                 # each engine's row is kept even if a later one is stopped
            _say(f"N={n}: {name}: build {row['build_s']:.1f} s, p50 {row['batch1']['p50_ms']:.1f} ms, "
                       f"recall@10 {row['recall@10']:.4f}, re-scored {row['rescored_per_query_k10']:.1f}", err=True)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        _write(results, out)
    results["uptime_end"] = _uptime()
    _write(results, out)
    return results


def run_real(index_dir, annotations, engines, out, work, *, lat1=50, progress=True) -> dict[str, Any]:
    """Agreement of each engine with the scan on a real index: every caption of ``annotations``
    encoded with the index's bundle, top-10 compared (same videos in the same order)."""
    from ..bundle import open_bundle
    from ..datasets import read_annotations
    from ..encoder import BundleEncoder
    from ..index import open_index

    index_dir, out = Path(index_dir), Path(out)
    index = open_index(index_dir)
    captions, _ = read_annotations(annotations)
    bundle = open_bundle(index.meta["bundle"]["path"])
    t0 = time.perf_counter()
    with BundleEncoder(bundle, precision=index.meta["precision"]) as enc:
        text = np.asarray(enc.encode_texts([c.text for c in captions], progress=progress), np.float32)
    encode_s = time.perf_counter() - t0
    truth = [h for a in range(0, len(text), 256) for h in Searcher(index, "scan").search(text[a:a + 256], 100)]
    work = Path(work) / "real-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for f in (index_dir / index.meta["arrays"]["frame_embeds"], index_dir / index.meta["arrays"]["frame_mask"]):
        os.link(f, work / f.name)
    meta = dict(index.meta)
    meta["engine"] = {"name": "scan"}
    results: dict[str, Any] = {"uptime_start": _uptime(), "index": str(index_dir), "annotations": str(annotations),
                               "n_videos": len(index), "n_captions": len(captions), "encode_s": encode_s,
                               "bundle": index.meta["bundle"], "similarity": index.similarity_args, "engines": []}
    for name in engines:
        (work / "index.json").write_text(json.dumps(meta))
        base_meta_files = {p.name for p in work.iterdir()}
        row = bench_engine_on(name, work, text, truth, lat1=lat1, progress=progress)
        disagree = [i for i, (h, t) in enumerate(zip(row.pop("hits10"), truth)) if not np.array_equal(h.rows, t.rows[:10])]
        row["disagreeing_captions"] = [{"caption": captions[i].text, "video_id": captions[i].video_id} for i in disagree[:20]]
        row["n_disagreeing"] = len(disagree)
        results["engines"].append(row)
        for p in list(work.iterdir()):
            if p.name not in base_meta_files:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        _say(f"real: {name}: identical top-10 {100 * row['identical_top10']:.1f}% "
                   f"({row['n_disagreeing']} captions differ), recall@10 {row['recall@10']:.4f}", err=True)
    results["uptime_end"] = _uptime()
    shutil.rmtree(work, ignore_errors=True)
    results["environment"] = environment()
    write_report(out, "real-agreement", results, real_markdown(results))
    return results


def real_markdown(r: dict) -> str:
    lines = ["# Search engines vs scan on real embeddings", "",
             f"Index `{r['index']}` ({r['n_videos']} videos, bundle {r['bundle']['id']}), captions `{r['annotations']}` "
             f"({r['n_captions']}). Top-10 per caption compared with the scan's (identical = same videos, same order).",
             "", f"Load at start `{r['uptime_start']}`, at end `{r['uptime_end']}` "
             f"({load_verdict(r['uptime_start'], r['uptime_end'], r.get('environment'))}).", "",
             "| engine | kind | identical top-10 | captions differing | recall@10 | recall@100 | re-scores/query | "
             "stop rule met | b1 p50 ms | build s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["engines"]:
        lines.append(f"| {e['engine']} | {e['kind']} | {100 * e['identical_top10']:.1f}% | {e['n_disagreeing']} | "
                     f"{e['recall@10']:.4f} | {e['recall@100']:.4f} | {e['rescored_per_query_k10']:.1f} | "
                     f"{100 * e['stop_rule_met_k10']:.1f}% | {e['batch1']['p50_ms']:.1f} | {e['build_s']:.1f} |")
    for e in r["engines"]:
        if e["disagreeing_captions"]:
            lines += ["", f"{e['engine']}: first differing captions: " + "; ".join(
                f"{c['caption']!r} ({c['video_id']})" for c in e["disagreeing_captions"][:5])]
    lines += ["", environment_markdown(r["environment"])]
    return "\n".join(lines)


def _fmt_bytes(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def load_verdict(*uptimes_and_env) -> str:
    """How far to trust the latencies, read off the 1-minute load averages against the usable cores."""
    *uptimes, env = uptimes_and_env
    cores = ((env or {}).get("cpu") or {}).get("usable_cores") or os.cpu_count() or 1
    loads = []
    for text in uptimes:
        try:
            loads.append(float(str(text).split("load average:")[1].split(",")[0]))
        except (IndexError, ValueError):
            continue
    if not loads:
        return "load unknown"
    worst = max(loads)
    if worst <= 0.75 * cores:
        return f"1-minute load at most {worst:.2f} on {cores} cores: a quiet machine"
    return (f"1-minute load up to {worst:.2f} on {cores} cores: the machine was busy, latencies are pessimistic "
            "and noisy; only same-run ratios compare")


def markdown(results: dict) -> str:
    env = results.get("environment") or environment()
    lines = ["# Search benchmark (`ts2net bench-search`)", "",
             f"Synthetic collections (docs/search.md \"Benchmark data\"): {results['frames']} frames x {results['dim']} "
             f"dims per video, float16 arrays, `official` frame mask, {results['queries']} queries, seed "
             f"{results['seed']} (per size: see below). Ground truth: the scan's top-100. Latency: ms per call (batch 1 = one query, "
             "k=10; batch 32 = 32 queries, k=10). Re-scores: distinct videos scored exactly per query (k=10).", "",
             f"Machine load at start: `{results['uptime_start']}`; at end: `{results.get('uptime_end', 'n/a')}` "
             f"({load_verdict(results['uptime_start'], results.get('uptime_end'), env)}).", "",
             "| N | engine | kind | build s | engine files | RSS growth | b1 p50 | b1 p95 | b32 p50 | b32 p95 | "
             "recall@10 | recall@100 | identical top-10 | re-scores/query | stop rule met | speed-up b1 p50 vs scan |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        scan = next((e for e in run["engines"] if e["engine"] == "scan"), None)
        for e in run["engines"]:
            speed = f"{scan['batch1']['p50_ms'] / e['batch1']['p50_ms']:.1f}x" if scan else "n/a"
            lines.append(
                f"| {run['n_videos']:,} | {e['engine']} | {e['kind']} | {e['build_s']:.1f} | {_fmt_bytes(e['engine_bytes'])} "
                f"| {_fmt_bytes(e['rss_search_growth_bytes'])} | {e['batch1']['p50_ms']:.1f} | {e['batch1']['p95_ms']:.1f} "
                f"| {e['batch32']['p50_ms']:.1f} | {e['batch32']['p95_ms']:.1f} | {e['recall@10']:.4f} | "
                f"{e['recall@100']:.4f} | {100 * e['identical_top10']:.1f}% | {e['rescored_per_query_k10']:.1f} "
                f"(p95 {e['rescored_p95_k10']:.0f}) | {100 * e['stop_rule_met_k10']:.1f}% | {speed} |")
    lines += ["", "Per size: " + "; ".join(
        f"N={r['n_videos']:,}: {r.get('queries', results['queries'])} queries ({r.get('latency_queries', '?')} "
        f"single, {r.get('latency_batches', '?')} batches of 32 timed), arrays {_fmt_bytes(r['arrays_bytes'])}, "
        f"generated in {r['generate_s']:.0f} s, "
        f"ground truth {r['ground_truth_s']:.1f} s, load `{r['uptime'].split('load average:')[-1].strip()}`"
        for r in results["runs"]), "", "Engine parameters: " + "; ".join(
        f"{e['engine']} @ N={r['n_videos']:,}: `{json.dumps(e['params'])}`"
        for r in results["runs"] for e in r["engines"] if e["params"]), "", environment_markdown(env)]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = results["engines"]
    for name in names:
        rows = [(r["n_videos"], e) for r in results["runs"] for e in r["engines"] if e["engine"] == name]
        if not rows:
            continue
        n = [x for x, _ in rows]
        axes[0].plot(n, [e["batch1"]["p50_ms"] for _, e in rows], "o-", label=name)
        axes[1].plot(n, [e["batch32"]["p50_ms"] / 32 for _, e in rows], "o-", label=name)
        axes[2].plot(n, [e["recall@10"] for _, e in rows], "o-", label=f"{name} @10")
        axes[2].plot(n, [e["recall@100"] for _, e in rows], "x--", label=f"{name} @100")
    for ax, title in zip(axes, ("p50 latency, batch 1 (ms)", "p50 latency per query, batch 32 (ms)",
                                "recall vs scan")):
        ax.set_xscale("log")
        ax.set_xlabel("videos (N)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(min(0.9, axes[2].get_ylim()[0]), 1.005)
    fig.suptitle("ts2net bench-search (synthetic, 12 frames x 512 dims; machine load: see report)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = dict(results)
    data["environment"] = environment()
    write_report(out, "bench-search", data, markdown(data))
    plot(data, out / "bench-search.png")
