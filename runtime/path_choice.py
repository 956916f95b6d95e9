"""The default CPU path of `ts2net index` / `search`: the fastest (backend, precision) that passed its gates.

Gates: FP32 graphs are always gated (a bundle is only valid if they pass). A reduced precision
passes its reference gates when its export-time row passed (manifest ``parity``: int8 graphs are
only listed if they pass; bf16 also needs a CPU that reports BF16 to OpenVINO), and its real-data
gates when ``ts2net parity --csv --videos`` recorded a pass for that backend and precision
(runtime/gate_record.py). The reference inputs alone are not enough to change what a user's search
returns: on the demo model every reduced path passes them, and the OpenVINO INT8 IR still changes
the top-1 answer of 14% of real queries. So the default of `index` / `search` takes a bf16 / int8 path only
once its real-data gates passed (`require_real_data`), and never one that failed them; the
benchmark's "fastest gated" column uses the reference gates (random-weight bundles have no real
data) minus real-data failures.

Speed order (fastest first) is the one measured by `ts2net bench` on the ViT-B/32-shaped bundle
(docs/openvino.md), per CPU kind: OpenVINO INT8, then OpenVINO BF16 before ONNX Runtime INT8 on AMX
CPUs and after it elsewhere, then FP32 (ONNX Runtime first: the two FP32 paths measured within noise
of each other, and ONNX Runtime FP32 was the default before). `ts2net eval` does not use this: its
numbers are the FP32 reference unless asked otherwise.
"""
from __future__ import annotations

from typing import Any

#: Precisions whose CPU paths run only the video graph reduced; their text graph stays FP32 unless asked.
VIDEO_ONLY_PRECISIONS = ("bf16", "int8")
#: Fastest first, as `ts2net bench` measured the ViT-B/32-shaped bundle (docs/openvino.md). With AMX
#: (Intel Sapphire Rapids) OpenVINO BF16 beat ONNX Runtime INT8; without it (AMD EPYC Zen 4: AVX512-BF16
#: and VNNI only) ONNX Runtime INT8 was faster than OpenVINO BF16 at batches 1 and 8.
SPEED_ORDER_AMX = (("openvino", "int8"), ("openvino", "bf16"), ("ort-cpu", "int8"), ("ort-cpu", "fp32"),
                   ("openvino", "fp32"))
SPEED_ORDER_NO_AMX = (("openvino", "int8"), ("ort-cpu", "int8"), ("openvino", "bf16"), ("ort-cpu", "fp32"),
                      ("openvino", "fp32"))


def speed_order() -> tuple[tuple[str, str], ...]:
    """The measured speed order of the CPU paths for this machine's CPU (AMX or not)."""
    from .reports import cpu_flags

    return SPEED_ORDER_AMX if "amx_bf16" in cpu_flags() else SPEED_ORDER_NO_AMX


AUTO = "auto"


def default_text_precision(backend: str, precision: str | None) -> str | None:
    """The text graph's precision on a path whose video graph runs `precision`.

    On the CPU paths (ONNX Runtime, OpenVINO) bf16 and int8 apply to the video graph only and the
    text graph stays FP32 (docs/openvino.md, "Text stays FP32"): on the demo model, 23% of the test
    captions have another caption within cosine 0.9999 (the two captions of a motion pair, which
    that model has not learnt to tell apart), so any reduced-precision text graph reorders such
    captions and flips 5-11% of the video-to-text top-1 answers, while the FP32 text graph with a
    bf16 / int8 video graph passes every gate. Queries are one short text each, so the FP32 text
    graph costs little; the video graph is where the time goes. Every other path (fp32, fp16,
    TensorRT / CUDA engines) runs both graphs at the same precision.
    """
    if backend in ("ort-cpu", "openvino") and precision in VIDEO_ONLY_PRECISIONS:
        return "fp32"
    return precision


def text_variants(backend: str, precision: str | None) -> list[str | None]:
    """Text-graph precisions a path may pair with its video graph, fastest first: the video graph's own
    (bf16 / int8 on the CPU paths), then the FP32 default."""
    default = default_text_precision(backend, precision)
    return [precision, default] if default != precision else [precision]


def query_text_precision(bundle, backend: str, precision: str | None) -> str | None:
    """The text precision queries are encoded with on the path (backend, precision).

    The reduced text graph only where a real-data run of the both-graphs path passed
    (`ts2net parity --text-precision P --csv --videos`: its captions had no near-duplicates that the
    reduced graph reorders); otherwise the default, FP32 on the CPU bf16 / int8 paths.
    """
    from .gate_record import real_data_passed

    for text in text_variants(backend, precision)[:-1]:
        if real_data_passed(bundle.manifest, backend, precision, text):
            return text
    return default_text_precision(backend, precision)


def _real_data_outcome(manifest: dict[str, Any], backend: str, precision: str) -> bool | None:
    """True if a real-data run of the path passed with some text variant, False if every recorded run
    failed, None if none is recorded."""
    from .gate_record import real_data_failed, real_data_passed

    variants = text_variants(backend, precision)
    if any(real_data_passed(manifest, backend, precision, t) for t in variants):
        return True
    if any(real_data_failed(manifest, backend, precision, t) for t in variants):
        return False
    return None


def _passed(manifest: dict[str, Any], key: str) -> bool:
    row = (manifest.get("parity") or {}).get(key) or {}
    return row.get("passed") is True


def gated_precisions(bundle, require_real_data: bool = False) -> set[tuple[str, str]]:
    """Every (backend, precision) that passed its gates for this bundle and can run on this machine.

    A path whose recorded real-data run failed is never included; with `require_real_data`, a bf16 /
    int8 path is included only once a real-data run passed.
    """
    gated = {path for path in _reference_gated(bundle) if _real_data_outcome(bundle.manifest, *path) is not False}
    if require_real_data:
        gated = {(b, p) for b, p in gated if p in ("fp32", "fp16") or _real_data_outcome(bundle.manifest, b, p)}
    return gated


def _reference_gated(bundle) -> set[tuple[str, str]]:
    from .openvino_backend import precision_status

    manifest = bundle.manifest
    gated = {("ort-cpu", "fp32")}
    if bundle.has_graph("text", "fp16") and _passed(manifest, "fp16"):
        gated.add(("ort-cpu", "fp16"))
    has_int8 = all(bundle.has_graph(g, "int8") for g in ("text", "video"))
    if has_int8 and _passed(manifest, "int8"):
        gated.add(("ort-cpu", "int8"))
    if precision_status("fp32")[0]:
        gated.add(("openvino", "fp32"))
        ir = all(bundle.graph_entry(g, "int8").get("openvino_ir") for g in ("text", "video")) if has_int8 else False
        if has_int8 and _passed(manifest, "int8_openvino" if ir else "int8"):
            gated.add(("openvino", "int8"))
        if _passed(manifest, "bf16") and precision_status("bf16")[0]:
            gated.add(("openvino", "bf16"))
    return gated


def fastest_gated_path(bundle) -> tuple[str, str, str]:
    """(backend, precision, why) of the fastest CPU path that passed every gate (real data included) here."""
    gated = gated_precisions(bundle, require_real_data=True)
    order = speed_order()
    for backend, precision in order:
        if (backend, precision) in gated:
            skipped = [f"{b} {p}" for b, p in order[:order.index((backend, precision))]]
            why = (f"fastest gated path here ({backend} {precision})" +
                   (f"; not available here or not gated (a bf16 / int8 path needs a passing `ts2net parity "
                    f"--csv --videos` run): {', '.join(skipped)}" if skipped else ""))
            return backend, precision, why
    return "ort-cpu", "fp32", "ONNX Runtime FP32 (nothing faster passed its gates here)"


def resolve(bundle, backend: str | None, precision: str | None) -> tuple[str, str, str]:
    """The user's choice, with "auto" (or nothing) for either part filled by the fastest gated path."""
    if backend in (None, AUTO):
        if precision in (None, AUTO):
            return fastest_gated_path(bundle)
        gated = gated_precisions(bundle, require_real_data=True)
        for b, p in speed_order():
            if p == precision and (b, p) in gated:
                return b, p, f"fastest gated backend for {precision}"
        return "ort-cpu", precision, f"ort-cpu {precision} (as asked)"
    if precision in (None, AUTO):
        gated = gated_precisions(bundle, require_real_data=True)
        for b, p in speed_order():
            if b == backend and (b, p) in gated:
                return b, p, f"fastest gated precision of {backend}"
        return backend, "fp32", f"{backend} fp32"
    return backend, precision, "as asked"
