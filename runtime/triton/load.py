"""`ts2net serve-load` (`make serve-load`): a bounded load test of the local Triton server.

What it shows, on 127.0.0.1 only: N concurrent clients (8 by default) sending single-caption text
requests and single-video requests, mixed; Triton's dynamic batcher combining them; every
response equal to what the local runtime computes for the same input alone (within the
precision's parity gate), and no response lost, duplicated or given to the wrong request (each
request carries its own id, which the response must echo, and its own distinct input). The
same requests are sent once by a single client first, so the throughput ratio is measured in
the same run on the same server.

Bounded: a fixed number of requests, a per-request timeout and a wall-clock limit per phase;
when the limit is hit the clients stop, and the report lists the unanswered requests as lost
(the test fails). Batch sizes come from the server: `nv_inference_count` /
`nv_inference_exec_count` of the Prometheus metrics endpoint (mean batch per model and phase)
and the statistics endpoint's per-batch-size execution counts (the histogram), plotted with the
throughput in `serve-load.png`.
"""
from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle, open_bundle
from ..parity import THRESHOLDS
from ..reports import environment, environment_markdown, write_report
from . import MODEL_NAMES
from .server import TritonServer

CAPTION_WORDS = (["a", "the", "one", "some"], ["dog", "cat", "man", "woman", "car", "bird", "child", "band"],
                 ["runs", "sings", "jumps", "cooks", "drives", "dances", "swims", "talks"],
                 ["on the beach", "in a kitchen", "at night", "on a stage", "in the rain", "down a road"])


@dataclass
class Request:
    id: str
    graph: str
    feed: dict[str, np.ndarray]
    expected: dict[str, np.ndarray] = field(default_factory=dict)


def _captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(part) for part in CAPTION_WORDS) + f" number {i}" for i in range(n)]


def build_requests(bundle: Bundle, texts: int, videos: int, seed: int = 0) -> list[Request]:
    """Distinct single-item requests, text and video interleaved (ids t0000..., v0000...)."""
    rng = np.random.default_rng(seed)
    ids = bundle.tokenizer().encode_batch(_captions(texts, seed), max_words=bundle.max_words).astype(np.int64)
    text_requests = [Request(f"t{i:04d}", "text", {"input_ids": ids[i:i + 1]}) for i in range(texts)]
    t, size = bundle.max_frames, bundle.image_size
    video_requests = []
    for i in range(videos):
        valid = int(rng.integers(1, t + 1))
        frames = np.zeros((1, t, 3, size, size), np.float32)
        frames[0, :valid] = rng.standard_normal((valid, 3, size, size), dtype=np.float32)
        mask = np.zeros((1, t), np.int64)
        mask[0, :valid] = 1
        video_requests.append(Request(f"v{i:04d}", "video", {"frames": frames, "frame_mask": mask}))
    # interleave so every client sends both kinds
    ratio = max(1, texts // max(videos, 1))
    merged, vi = [], iter(video_requests)
    for i, request in enumerate(text_requests):
        merged.append(request)
        if (i + 1) % ratio == 0:
            merged.extend(r for r in [next(vi, None)] if r is not None)
    merged.extend(vi)
    return merged


def local_outputs(bundle: Bundle, requests: list[Request], backend: str, precision: str | None) -> None:
    """Fill `expected` with the local runtime's output of each request alone."""
    from ..backends import create_backend

    runners = {graph: create_backend(bundle, graph, backend, precision).load() for graph in MODEL_NAMES}
    try:
        for request in requests:
            request.expected = runners[request.graph].infer(request.feed)
    finally:
        for runner in runners.values():
            runner.close()


def compare(request: Request, received: dict[str, np.ndarray], precision: str) -> list[str]:
    """Problems of one response against the local output, with the precision's parity gate."""
    gate = THRESHOLDS.get(precision, THRESHOLDS["fp16"])
    problems = []
    for name, want in request.expected.items():
        got = received.get(name)
        if got is None or got.shape != want.shape or got.dtype != want.dtype:
            problems.append(f"{request.id} {name}: expected {want.dtype} {list(want.shape)}, got "
                            f"{None if got is None else (got.dtype, list(got.shape))}")
            continue
        if not np.all(np.isfinite(got)):
            problems.append(f"{request.id} {name}: non-finite values")
        elif name == "patch_indices":
            agreement = float(np.mean(np.sort(got, -1) == np.sort(want, -1)))
            if agreement < gate.get("selection_agreement", 1.0):
                problems.append(f"{request.id} {name}: selection agreement {agreement:.4f} < "
                                f"{gate.get('selection_agreement', 1.0)}")
        else:
            a = want.reshape(-1, want.shape[-1]).astype(np.float64)
            b = got.reshape(-1, got.shape[-1]).astype(np.float64)
            keep = np.linalg.norm(a, axis=1) > 0  # padded frames: zero rows compare by abs error only
            cos = np.sum(a[keep] * b[keep], 1) / (np.linalg.norm(a[keep], axis=1) * np.linalg.norm(b[keep], axis=1))
            worst = float(cos.min()) if cos.size else 1.0
            err = float(np.max(np.abs(a - b)))
            if worst < gate["cosine_min"]:
                problems.append(f"{request.id} {name}: cosine {worst:.7f} < {gate['cosine_min']}")
            if "max_abs_err" in gate and err > gate["max_abs_err"]:
                problems.append(f"{request.id} {name}: max abs error {err:.3g} > {gate['max_abs_err']}")
    return problems


def _metric_totals(metrics_url: str) -> dict[str, dict[str, float]]:
    """model -> {inference_count, exec_count} from the Prometheus text of the metrics endpoint."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    totals: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = re.match(r'^nv_inference_(count|exec_count)\{model="([^"]+)",version="[^"]*"\} ([0-9.eE+-]+)$', line)
        if match:
            totals.setdefault(match.group(2), {})[f"inference_{match.group(1)}" if match.group(1) == "count"
                                                  else "exec_count"] = float(match.group(3))
    return totals


def _batch_histogram(client, model: str) -> dict[int, int]:
    """batch size -> executions, from the statistics endpoint."""
    stats = client.get_inference_statistics(model)
    result = {}
    for model_stats in stats.get("model_stats", []):
        for entry in model_stats.get("batch_stats", []):
            result[int(entry["batch_size"])] = int(entry["compute_infer"]["count"])
    return result


def _server_counters(server: TritonServer) -> dict[str, Any]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        return {"metrics": _metric_totals(server.metrics_url),
                "histogram": {name: _batch_histogram(client, name) for name in MODEL_NAMES.values()}}
    finally:
        client.close()


def _counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for name in MODEL_NAMES.values():
        b, a = before["metrics"].get(name, {}), after["metrics"].get(name, {})
        inferences = a.get("inference_count", 0) - b.get("inference_count", 0)
        executions = a.get("exec_count", 0) - b.get("exec_count", 0)
        hb, ha = before["histogram"].get(name, {}), after["histogram"].get(name, {})
        histogram = {size: count - hb.get(size, 0) for size, count in sorted(ha.items()) if count - hb.get(size, 0)}
        result[name] = {"inferences": int(inferences), "executions": int(executions),
                        "mean_batch": round(inferences / executions, 3) if executions else None,
                        "max_batch": max(histogram) if histogram else None, "batch_histogram": histogram}
    return result


def run_phase(server: TritonServer, requests: list[Request], clients: int, precision: str, time_limit_s: float,
              request_timeout_s: float) -> dict[str, Any]:
    """Send `requests` from `clients` threads (round-robin split); check every response."""
    import tritonclient.grpc as grpcclient

    from .client import WIRE_DTYPES

    address = f"127.0.0.1:{server.grpc_port}"
    shares = [requests[i::clients] for i in range(clients)]
    responses: dict[str, list[dict[str, np.ndarray]]] = {r.id: [] for r in requests}
    latencies: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit_s

    def work(share: list[Request]) -> None:
        client = grpcclient.InferenceServerClient(address)
        try:
            for request in share:
                if time.monotonic() > deadline:
                    return
                inputs = []
                for name, array in request.feed.items():
                    tensor = grpcclient.InferInput(name, list(array.shape), WIRE_DTYPES[str(array.dtype)])
                    tensor.set_data_from_numpy(array)
                    inputs.append(tensor)
                outputs = [grpcclient.InferRequestedOutput(name) for name in request.expected]
                start = time.perf_counter()
                try:
                    result = client.infer(MODEL_NAMES[request.graph], inputs, outputs=outputs,
                                          request_id=request.id, client_timeout=request_timeout_s)
                except Exception as exc:  # noqa: BLE001 - every failure is a reported error, not a crash
                    with lock:
                        errors.append(f"{request.id}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                elapsed = time.perf_counter() - start
                echoed = result.get_response().id
                received = {name: result.as_numpy(name) for name in request.expected}
                with lock:
                    latencies[request.id] = elapsed
                    target = echoed if echoed in responses else None
                    if target is None:
                        errors.append(f"{request.id}: response carries unknown id {echoed!r}")
                    else:
                        responses[target].append(received)
        finally:
            client.close()

    before = _server_counters(server)
    threads = [threading.Thread(target=work, args=(share,), daemon=True) for share in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + request_timeout_s)
    wall = time.perf_counter() - start
    after = _server_counters(server)
    lost = [rid for rid, got in responses.items() if not got]
    duplicated = [rid for rid, got in responses.items() if len(got) > 1]
    mismatches = []
    by_id = {r.id: r for r in requests}
    for rid, got in responses.items():
        for received in got[:1]:
            mismatches += compare(by_id[rid], received, precision)
    answered = len(requests) - len(lost)
    per_graph = {}
    for graph in MODEL_NAMES:
        ids = [r.id for r in requests if r.graph == graph]
        times = np.array([latencies[i] for i in ids if i in latencies]) * 1e3
        per_graph[graph] = {"requests": len(ids), "answered": int(sum(1 for i in ids if responses[i])),
                            "per_s": round(len(times) / wall, 2) if wall else None,
                            "latency_ms_p50": round(float(np.percentile(times, 50)), 2) if times.size else None,
                            "latency_ms_p95": round(float(np.percentile(times, 95)), 2) if times.size else None}
    return {"clients": clients, "requests": len(requests), "answered": answered, "wall_s": round(wall, 3),
            "requests_per_s": round(answered / wall, 2) if wall else None, "per_graph": per_graph,
            "lost": lost, "duplicated": duplicated, "errors": errors, "mismatches": mismatches,
            "timed_out": time.monotonic() > deadline and bool(lost), "server": _counter_delta(before, after),
            "passed": not (lost or duplicated or errors or mismatches)}


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_load_test(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, clients: int = 8, texts: int = 96,
                  videos: int = 24, backend: str = "ort-cpu", precision: str | None = None, time_limit_s: float = 300.0,
                  request_timeout_s: float = 60.0, queue_delay_us: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Start the server, run the single-client and the concurrent phase, write JSON + Markdown."""
    if clients < 2:
        raise ValueError(f"clients={clients}: the concurrent phase needs at least 2 clients")
    bundle = open_bundle(bundle_dir)
    precision = precision or "fp32"
    requests = build_requests(bundle, texts, videos, seed)
    local_outputs(bundle, requests, backend, precision)
    load_before = _load_average()
    with TritonServer(bundle, backend=backend, precision=precision, queue_delay_us=queue_delay_us) as server:
        warm = [next(r for r in requests if r.graph == g) for g in MODEL_NAMES]
        run_phase(server, warm, 2, precision, 60.0, request_timeout_s)
        single = run_phase(server, requests, 1, precision, time_limit_s, request_timeout_s)
        concurrent = run_phase(server, requests, clients, precision, time_limit_s, request_timeout_s)
        facts = dict(server.facts)
    speedup = (round(concurrent["requests_per_s"] / single["requests_per_s"], 2)
               if single["requests_per_s"] and concurrent["requests_per_s"] else None)
    report = {"kind": "serve-load", "bundle": str(bundle.path.resolve()), "bundle_id": bundle.content_id, "backend": backend,
              "precision": precision, "gate": THRESHOLDS.get(precision, THRESHOLDS["fp16"]), "server": facts,
              "requests": {"text": texts, "video": videos}, "time_limit_s": time_limit_s,
              "request_timeout_s": request_timeout_s, "single": single, "concurrent": concurrent,
              "throughput_ratio": speedup, "load_average_before": load_before, "load_average_after": _load_average(),
              "passed": single["passed"] and concurrent["passed"], "environment": environment()}
    write_report(out_dir, "serve-load", report, load_markdown(report))
    plot_load(report, Path(out_dir) / "serve-load.png")
    return report


def plot_load(report: dict[str, Any], path: Path) -> None:
    """Requests/s per graph for 1 vs N clients, and the batch sizes Triton formed under load (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single, concurrent = report["single"], report["concurrent"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    graphs = list(MODEL_NAMES)
    x = np.arange(len(graphs))
    for offset, phase, label in ((-0.2, single, "1 client"), (0.2, concurrent, f"{concurrent['clients']} clients")):
        left.bar(x + offset, [phase["per_graph"][g]["per_s"] or 0 for g in graphs], 0.4, label=label)
    left.set_xticks(x, [f"{g} requests" for g in graphs])
    left.set_ylabel("responses / s")
    left.set_title(f"throughput (all requests: x{report['throughput_ratio']})")
    left.legend()
    for i, (model, stats) in enumerate(concurrent["server"].items()):
        sizes = sorted(stats["batch_histogram"])
        right.bar(np.array(sizes) + (i - 0.5) * 0.4, [stats["batch_histogram"][b] for b in sizes], 0.4,
                  label=f"{model} (mean {stats['mean_batch']})")
    right.set_xlabel("batch size Triton executed")
    right.set_ylabel("executions")
    right.set_title(f"dynamic batching, {concurrent['clients']} clients")
    right.legend(loc="best")
    fig.suptitle(f"ts2net serve on {report['environment']['cpu']['model']} ({report['backend']} "
                 f"{report['precision']}; load average {report['load_average_before']})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def load_markdown(report: dict[str, Any]) -> str:
    single, concurrent = report["single"], report["concurrent"]
    lines = [f"# Triton serve load test: {'PASS' if report['passed'] else 'FAIL'}", "",
             f"Bundle `{report['bundle']}` (id `{report['bundle_id']}`), server backend {report['backend']} "
             f"{report['precision']}, PyTriton on 127.0.0.1 (Python {report['server'].get('python')}), dynamic "
             f"batching {report['server'].get('batching')}.", "",
             f"{report['requests']['text']} single-caption text requests and {report['requests']['video']} single-video "
             "requests, each sent once per phase; every response compared with the local runtime's output for the "
             f"same input alone (gate: {report['gate']}).", "",
             "| phase | clients | answered | wall s | requests/s | text/s | video/s | text p50 / p95 ms | "
             "video p50 / p95 ms | lost | duplicated | mismatches | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, phase in (("single client", single), ("concurrent", concurrent)):
        t, v = phase["per_graph"]["text"], phase["per_graph"]["video"]
        lines.append(f"| {name} | {phase['clients']} | {phase['answered']}/{phase['requests']} | {phase['wall_s']} | "
                     f"{phase['requests_per_s']} | {t['per_s']} | {v['per_s']} | {t['latency_ms_p50']} / "
                     f"{t['latency_ms_p95']} | {v['latency_ms_p50']} / {v['latency_ms_p95']} | {len(phase['lost'])} | "
                     f"{len(phase['duplicated'])} | {len(phase['mismatches'])} | {len(phase['errors'])} |")
    lines += ["", f"Throughput, {concurrent['clients']} clients vs 1: **x{report['throughput_ratio']}**.", "",
              "Batches Triton formed (metrics endpoint: inferences / executions; statistics endpoint: executions per "
              "batch size):", "", "| phase | model | inferences | executions | mean batch | max batch | histogram |",
              "|---|---|---|---|---|---|---|"]
    for name, phase in (("single client", single), ("concurrent", concurrent)):
        for model, stats in phase["server"].items():
            histogram = ", ".join(f"{k}: {v}" for k, v in stats["batch_histogram"].items())
            lines.append(f"| {name} | {model} | {stats['inferences']} | {stats['executions']} | {stats['mean_batch']} "
                         f"| {stats['max_batch']} | {histogram} |")
    for name, phase in (("single client", single), ("concurrent", concurrent)):
        for label in ("lost", "duplicated", "errors", "mismatches"):
            if phase[label]:
                lines += ["", f"{name}, {label} ({len(phase[label])}):", *[f"- {x}" for x in phase[label][:20]]]
    lines += ["", f"Load average (1, 5, 15 min) before: {report['load_average_before']}, after: "
              f"{report['load_average_after']}.", "", environment_markdown(report["environment"])]
    return "\n".join(lines) + "\n"
