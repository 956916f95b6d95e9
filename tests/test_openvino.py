"""OpenVINO backend (fp32 / bf16 / int8), INT8 graphs made at export, bf16 / int8 gates, default path choice."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from export import int8 as q
from runtime import openvino_backend as ovb
from runtime.backends import BackendUnavailable, create_backend
from runtime.bundle import Bundle, open_bundle, sha256_file
from runtime.encoder import BundleEncoder
from runtime.parity import THRESHOLDS, compare_outputs
from runtime.parity_check import check_reference, retrieval_gates
from runtime.path_choice import fastest_gated_path, gated_precisions
from cli.parity import parity_command
from test_backends import write_mp4

HAS_BF16 = ovb.precision_status("bf16")[0]
NO_BF16_REASON = "this CPU does not report BF16 to OpenVINO: " + ovb.precision_status("bf16")[1]


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return open_bundle(bundle_dir)


def outputs(bundle, backend: str, precision: str) -> dict[str, np.ndarray]:
    ref = bundle.reference()
    with BundleEncoder(bundle, backend, precision) as encoder:
        text = encoder.encode_ids(ref["input_ids"])
        frames, indices = encoder.encode_frames(ref["frames"], ref["frame_mask"])
    return {"text_embeds": text, "frame_embeds": frames, "patch_indices": indices, "frame_mask": ref["frame_mask"]}


# ------------------------------------------------------------------------------ the backend
def test_openvino_fp32_matches_onnxruntime_fp32_within_the_fp32_row(bundle):
    ort, ov = outputs(bundle, "ort-cpu", "fp32"), outputs(bundle, "openvino", "fp32")
    result = compare_outputs(ort, ov, "fp32", **bundle.similarity_args)
    assert result.passed, result.failures
    assert ov["patch_indices"].dtype == np.int64 and ov["frame_embeds"].dtype == np.float32
    with BundleEncoder(bundle, "openvino", "fp32") as encoder:
        assert check_reference(bundle, encoder).passed      # and against PyTorch FP32 itself
        assert encoder.backend("video").compiled_precision() == "f32"  # not OpenVINO's bf16 default on AMX


@pytest.mark.skipif(not HAS_BF16, reason=NO_BF16_REASON)
def test_openvino_bf16_matches_onnxruntime_fp32_within_the_bf16_row(bundle):
    ort, ov = outputs(bundle, "ort-cpu", "fp32"), outputs(bundle, "openvino", "bf16")
    result = compare_outputs(ort, ov, "bf16", **bundle.similarity_args)
    assert result.passed, result.failures
    assert result.figures["frame_embeds"]["cosine_min"] < 1 - 1e-7  # it really ran in reduced precision
    with BundleEncoder(bundle, "openvino", "bf16") as encoder:
        assert encoder.backend("video").compiled_precision() == "bf16"
        assert check_reference(bundle, encoder).passed


def test_openvino_reshapes_per_batch_and_keeps_the_compiled_models(bundle):
    ref = bundle.reference()
    backend = create_backend(bundle, "video", "openvino", "fp32", threads=1).load()
    whole = backend.infer({"frames": ref["frames"], "frame_mask": ref["frame_mask"]})
    parts = [backend.infer({"frames": ref["frames"][i:i + 4], "frame_mask": ref["frame_mask"][i:i + 4]})
             for i in (0, 4)]
    np.testing.assert_allclose(np.concatenate([p["frame_embeds"] for p in parts]), whole["frame_embeds"],
                               rtol=1e-4, atol=1e-4)
    assert sorted(backend._compiled) == [2, 4, 6] and backend.last_latency_ms > 0
    backend.close()


# ------------------------------------------------------------------------------ refusals
def test_refusal_without_openvino_installed(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    ovb._core.cache_clear()
    try:
        with pytest.raises(BackendUnavailable, match=r"openvino is not installed.*pip install 'ts2net-deploy\[openvino\]'"):
            create_backend(bundle, "video", "openvino", "fp32")
    finally:
        ovb._core.cache_clear()


def test_refusal_of_bf16_on_a_cpu_without_bf16(bundle, monkeypatch):
    monkeypatch.setattr(ovb, "cpu_capabilities", lambda: ["FP32", "FP16", "INT8", "BIN"])
    with pytest.raises(BackendUnavailable, match=r"does not report BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES"
                                                 r".*use precision int8 or fp32"):
        create_backend(bundle, "video", "openvino", "bf16")
    assert ("openvino", "bf16") not in gated_precisions(bundle)
    with pytest.raises(BackendUnavailable, match="bf16 is an OpenVINO inference hint"):
        create_backend(bundle, "video", "ort-cpu", "bf16")


def test_refusal_when_the_int8_graph_is_missing(bundle):
    manifest = json.loads(json.dumps(bundle.manifest))
    del manifest["graphs"]["video"]["int8"]
    without = Bundle(bundle.path, manifest)
    for backend in ("openvino", "ort-cpu"):
        with pytest.raises(BackendUnavailable, match=r"no int8 video graph.*ts2net quantize --bundle"):
            create_backend(without, "video", backend, "int8")


def test_parity_skip_unsupported_reports_the_reason(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ovb, "cpu_capabilities", lambda: ["FP32", "INT8"])
    args = ["--bundle", str(bundle_dir), "--backend", "openvino", "--precision", "bf16", "--out", str(tmp_path)]
    refused = CliRunner().invoke(parity_command, args)
    assert refused.exit_code == 2 and "does not report BF16" in refused.output
    skipped = CliRunner().invoke(parity_command, args + ["--skip-unsupported"])
    assert skipped.exit_code == 0 and "SKIPPED" in skipped.output
    assert "does not report BF16" in json.loads((tmp_path / "parity.json").read_text())["skipped"]


# ------------------------------------------------------------------------------ INT8 graphs from export
def test_int8_export_writes_files_manifest_entries_and_checksums(bundle):
    for graph in ("text", "video"):
        entry = bundle.graph_entry(graph, "int8")
        assert entry["file"] == f"{graph}.int8.onnx" and entry["precision"] == "int8"
        assert entry["sha256"] == sha256_file(bundle.path / entry["file"])
        assert entry["inputs"] == bundle.graph_entry(graph, "fp32")["inputs"]
        assert entry["outputs"] == bundle.graph_entry(graph, "fp32")["outputs"]
        assert entry["quantization"]["mode"] == q.DEFAULT_ONNX_MODE
        ir = entry["openvino_ir"]
        assert ir["file"] == f"{graph}.int8.xml" and ir["weights"]["file"] == f"{graph}.int8.bin"
        for item in (ir, ir["weights"]):
            assert item["sha256"] == sha256_file(bundle.path / item["file"])
            assert item["bytes"] == (bundle.path / item["file"]).stat().st_size
        calibration = entry["calibration"]
        assert calibration["items"] == (q.DEFAULT_CALIBRATION_VIDEOS if graph == "video" else
                                        calibration["items"]) and calibration["items"] > 0
        assert len(calibration["sha256"]) == 64 and "embedded benchmark" in calibration["videos_source"]
    listed = bundle.listed_files()
    assert listed["video.int8.bin"] == "graphs.video.int8.openvino_ir.weights"
    for key in ("int8", "int8_openvino"):
        row = bundle.manifest["parity"][key]
        assert row["passed"] is True and row["thresholds"] == THRESHOLDS["int8"]
        assert row["figures"]["frame_embeds"]["cosine_mean"] >= 0.995


def test_an_altered_int8_ir_is_refused(bundle_dir, tmp_path):
    copy = shutil.copytree(bundle_dir, tmp_path / "b")
    weights = copy / "video.int8.bin"
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(Exception, match="video.int8.bin does not match its checksum"):
        open_bundle(copy)


def test_int8_graphs_keep_the_selector_topk_and_norms_in_float(bundle):
    model = onnx.load(str(bundle.path / "video.int8.onnx"))
    assert q.quantized_ops(model).get("MatMulInteger", 0) > 0 or q.quantized_ops(model).get("DynamicQuantizeMatMul")
    assert q.quantized_nodes_in_float_scope(model) == []
    topk = [n for n in model.graph.node if n.op_type == "TopK"]
    assert len(topk) == 1 and "/visual_token_selector/" in topk[0].name
    selector_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and "/visual_token_selector/" in n.name]
    assert len(selector_matmuls) == 3  # the score predictor's three projections, still float MatMul
    fake_quantize, bad = q.openvino_fake_quantized_in_float_scope(bundle.path / "video.int8.xml")
    assert fake_quantize > 0 and bad == []


def test_the_float_scope_inspection_catches_a_quantized_selector(bundle, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    out = tmp_path / "all.int8.onnx"  # everything quantized, the selector included
    quantize_dynamic(str(bundle.path / "video.onnx"), str(out), op_types_to_quantize=["MatMul"])
    bad = q.quantized_nodes_in_float_scope(onnx.load(str(out)))
    assert any("/visual_token_selector/score_predictor" in b for b in bad)


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_int8_passes_its_gates_on_the_reference_inputs(bundle, backend):
    with BundleEncoder(bundle, backend, "int8") as encoder:
        result = check_reference(bundle, encoder)
        if backend == "openvino":
            assert encoder.backend("video").source_file == "video.int8.xml"  # the NNCF IR, not the ONNX
    assert result.precision == "int8" and result.passed, result.failures
    fig = result.figures
    assert fig["patch_indices"]["agreement"] >= THRESHOLDS["int8"]["selection_agreement"]
    assert fig["text_embeds"]["cosine_min"] >= 0.99 and fig["frame_embeds"]["cosine_mean"] >= 0.995


def test_quantize_command_calibrates_on_given_videos_and_captions(bundle_dir, tmp_path):
    from cli.export import quantize_command

    copy = shutil.copytree(bundle_dir, tmp_path / "b")
    videos = tmp_path / "calib"
    videos.mkdir()
    for i in range(3):
        write_mp4(videos / f"c{i}.mp4", frames=20 + 5 * i, seed=10 + i)
    captions = tmp_path / "captions.txt"
    lines = [f"a {size} {colour} {shape} {motion}" for size in ("small", "large") for colour in ("red", "blue", "green")
             for shape in ("square", "circle") for motion in ("moves left", "grows")]
    captions.write_text("\n".join(lines[:12]) + "\n\n" + "\n".join(lines[12:]) + "\n")
    result = CliRunner().invoke(quantize_command, ["--bundle", str(copy), "--calibration-videos", str(videos),
                                                   "--calibration-captions", str(captions)])
    assert result.exit_code == 0, result.output
    assert "int8 (onnxruntime-cpu): PASS" in result.output and "frame cos min" in result.output
    manifest = json.loads((copy / "manifest.json").read_text())
    video, text = manifest["graphs"]["video"]["int8"], manifest["graphs"]["text"]["int8"]
    assert video["calibration"]["items"] == 3 and text["calibration"]["items"] == len(lines)  # blank line dropped
    expected = q.load_calibration(open_bundle(copy), videos, captions, progress=False).sha256
    assert video["calibration"]["sha256"] == expected == text["calibration"]["sha256"]
    assert str(videos) in video["calibration"]["videos_source"]
    # 3 videos are a thin calibration set: whichever way the IR's gate goes, the manifest must follow it
    ir_row = manifest["parity"]["int8_openvino"]
    assert f"int8_openvino (openvino): {'PASS' if ir_row['passed'] else 'FAIL'}" in result.output
    assert ("openvino_ir" in video) == ir_row["passed"] == (copy / "video.int8.xml").is_file()
    open_bundle(copy)  # every listed file matches its checksum


def test_calibration_refuses_an_empty_folder_and_captions_file(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "captions.txt").write_text("a red square moves left\n")
    with pytest.raises(q.CalibrationError, match="no video files"):
        q.load_calibration(bundle, tmp_path / "empty", tmp_path / "captions.txt", progress=False)
    with pytest.raises(q.CalibrationError, match="needs real videos and captions: pass --calibration-videos"):
        q.load_calibration(bundle, None, None, progress=False)  # the library has no default source of its own
    (tmp_path / "c.csv").write_text("video_id,text\nv1,hello\n")
    with pytest.raises(q.CalibrationError, match="'sentence' or 'caption' column"):
        q.read_captions(tmp_path / "c.csv")


# ------------------------------------------------------------------------------ gates on real data
def test_retrieval_gates_report_every_figure_and_fail_each_direction():
    rng = np.random.default_rng(0)
    n, frames, dim = 40, 4, 16
    expected = {"text_embeds": rng.standard_normal((n, dim)).astype(np.float32),
                "frame_embeds": rng.standard_normal((n, frames, dim)).astype(np.float32),
                "frame_mask": np.ones((n, frames), np.int64)}
    expected["frame_embeds"] += 2 * expected["text_embeds"][:, None, :]  # caption i matches video i
    args = {"logit_scale": 100.0, "frame_mask_mode": "fixed", "tokens_per_frame": 4, "softmax_factor": 4.0}
    gt = np.arange(n)
    figures, failures = retrieval_gates(expected, expected, gt, "int8", args)
    assert failures == [] and figures["top1_agreement"] == figures["v2t_top1_agreement"] == 1.0
    assert {"r1_delta_points", "r5_delta_points", "v2t_r1_delta_points", "v2t_r5_delta_points",
            "t2v_reference", "v2t_backend"} <= set(figures)
    swapped = dict(expected, text_embeds=expected["text_embeds"][np.r_[1, 0, 3, 2, 4:n]])  # 4 captions answer wrong
    figures, failures = retrieval_gates(expected, swapped, gt, "int8", args)
    assert figures["top1_agreement"] == pytest.approx(36 / 40)
    assert any(f.startswith("t2v top-1 identical") for f in failures)
    assert any(f.startswith("t2v |R@1 delta| 10.00") for f in failures)
    assert any(f.startswith("v2t") for f in failures)


# ------------------------------------------------------------------------------ default path
def with_real_data(bundle, **outcomes) -> Bundle:
    """The bundle with recorded real-data gate outcomes, e.g. with_real_data(b, openvino_int8=True)."""
    manifest = json.loads(json.dumps(bundle.manifest))
    from runtime.gate_record import path_key

    # key "<backend>_<precision>[_<text precision>]": the default text graph when no third part
    manifest["parity"]["real_data"] = {path_key(*key.split("_", 2)): {"passed": passed}
                                       for key, passed in outcomes.items()}
    return Bundle(bundle.path, manifest)


def test_fastest_gated_path_needs_a_real_data_pass_for_reduced_precision(bundle):
    fp32_first = fastest_gated_path(bundle)
    assert fp32_first[1] == "fp32" and "ts2net parity" in fp32_first[2]  # reference gates alone are not enough
    assert ("openvino", "int8") in gated_precisions(bundle)            # ... but they are for the benchmark column
    assert fastest_gated_path(with_real_data(bundle, openvino_int8=True))[:2] == ("openvino", "int8")
    failed = with_real_data(bundle, openvino_int8=False, openvino_bf16=True, **{"ort-cpu_int8": True})
    assert ("openvino", "int8") not in gated_precisions(failed)
    from runtime.path_choice import speed_order

    bf16_first = HAS_BF16 and speed_order().index(("openvino", "bf16")) < speed_order().index(("ort-cpu", "int8"))
    assert fastest_gated_path(failed)[:2] == (("openvino", "bf16") if bf16_first else ("ort-cpu", "int8"))


def test_speed_order_follows_the_cpu_kind_it_was_measured_on(monkeypatch):
    import runtime.reports as reports
    from runtime.path_choice import speed_order

    monkeypatch.setattr(reports, "cpu_flags", lambda: ["avx512_bf16", "amx_tile", "amx_bf16"])
    amx = speed_order()
    monkeypatch.setattr(reports, "cpu_flags", lambda: ["avx2", "avx512_bf16", "avx512_vnni"])
    no_amx = speed_order()
    assert amx.index(("openvino", "bf16")) < amx.index(("ort-cpu", "int8"))
    assert no_amx.index(("ort-cpu", "int8")) < no_amx.index(("openvino", "bf16"))
    assert amx[0] == no_amx[0] == ("openvino", "int8") and sorted(amx) == sorted(no_amx)


def test_a_real_data_parity_run_records_its_gate_in_the_manifest(bundle_dir, tmp_path):
    from runtime.gate_record import record_real_data_gate

    copy = shutil.copytree(bundle_dir, tmp_path / "b")
    real = {"annotations": "x.csv", "n_captions": 3, "n_videos": 3, "failures": ["real data: t2v top-1 ..."],
            "retrieval": {"top1_agreement": 0.5, "r1_delta_points": 0.0}}
    record_real_data_gate(copy, "openvino", "int8", real)
    record_real_data_gate(copy, "openvino", "bf16", dict(real, failures=[]))
    record_real_data_gate(copy, "openvino", "bf16", real, text_precision="bf16")  # both graphs bf16: apart
    entries = json.loads((copy / "manifest.json").read_text())["parity"]["real_data"]
    assert entries["openvino int8 text=fp32"]["passed"] is False
    assert entries["openvino int8 text=fp32"]["figures"]["top1_agreement"] == 0.5
    assert entries["openvino bf16 text=fp32"]["passed"] is True and entries["openvino bf16"]["passed"] is False
    reopened = open_bundle(copy)  # the bundle id and every checksum are untouched
    assert reopened.content_id == open_bundle(bundle_dir).content_id
    assert ("openvino", "int8") not in gated_precisions(reopened)
    assert (("openvino", "bf16") in gated_precisions(reopened, require_real_data=True)) == HAS_BF16


def test_reduced_precision_cpu_paths_keep_the_text_graph_fp32(bundle):
    """bf16 / int8 on ONNX Runtime and OpenVINO reduce the video graph only, unless asked otherwise."""
    from runtime.encoder import BundleEncoder
    from runtime.gate_record import path_key
    from runtime.path_choice import default_text_precision

    assert [default_text_precision(b, p) for b, p in (("ort-cpu", "int8"), ("openvino", "int8"), ("openvino", "bf16"),
            ("ort-cpu", "fp16"), ("ort-cpu", "fp32"), ("tensorrt", None), ("ort-cuda", "int8"))] == \
        ["fp32", "fp32", "fp32", "fp16", "fp32", None, "int8"]
    assert path_key("openvino", "bf16") == "openvino bf16 text=fp32"
    assert path_key("openvino", "bf16", "bf16") == "openvino bf16" and path_key("ort-cpu", "fp16") == "ort-cpu fp16"
    with BundleEncoder(bundle, "ort-cpu", "int8") as mixed, BundleEncoder(bundle, "ort-cpu", "fp32") as fp32, \
            BundleEncoder(bundle, "ort-cpu", "int8", text_precision="int8") as both:
        assert (mixed.backend("text").precision, mixed.backend("video").precision) == ("fp32", "int8")
        assert both.backend("text").precision == "int8"
        ids = bundle.reference()["input_ids"]
        np.testing.assert_array_equal(mixed.encode_ids(ids), fp32.encode_ids(ids))  # the very FP32 text graph
        assert not np.array_equal(both.encode_ids(ids), fp32.encode_ids(ids))


def test_int8_parity_on_real_data_runs_the_fp32_text_graph_and_records_that_path(bundle_dir, colour_clips, tmp_path):
    """`ts2net parity --precision int8`: the text embeddings equal the FP32 reference's exactly (same graph,
    same runtime), the report names both precisions, and the record gates the default int8 path only."""
    copy = shutil.copytree(bundle_dir, tmp_path / "b")
    before = set(json.loads((copy / "manifest.json").read_text())["parity"].get("real_data", {}))
    csv = tmp_path / "captions.csv"
    csv.write_text("video_id,caption\n" + "".join(f"video{i},colour clip number {i}\n" for i in range(6)))
    out = tmp_path / "report"
    args = ["--bundle", str(copy), "--backend", "ort-cpu", "--precision", "int8", "--csv", str(csv), "--videos",
            str(colour_clips), "--no-progress"]
    result = CliRunner().invoke(parity_command, [*args, "--out", str(out)])
    assert result.exit_code in (0, 1) and "parity ort-cpu int8 (text fp32)" in result.output, result.output
    report = json.loads((out / "parity.json").read_text())
    assert (report["precision"], report["text_precision"]) == ("int8", "fp32")
    text = report["real_data"]["comparison"]["figures"]["text_embeds"]
    assert text["max_abs_err"] == 0.0 and text["cosine_min"] >= 1 - 1e-12
    assert "text graph fp32" in (out / "parity.md").read_text().splitlines()[0]
    entries = json.loads((copy / "manifest.json").read_text())["parity"]["real_data"]
    assert set(entries) - before == {"ort-cpu int8 text=fp32"}
    result = CliRunner().invoke(parity_command, [*args, "--text-precision", "int8", "--out", str(tmp_path / "r2")])
    report = json.loads((tmp_path / "r2" / "parity.json").read_text())
    assert report["text_precision"] == "int8" and report["real_data"]["comparison"]["figures"]["text_embeds"][
        "max_abs_err"] > 0
    assert set(json.loads((copy / "manifest.json").read_text())["parity"]["real_data"]) - before == {
        "ort-cpu int8", "ort-cpu int8 text=fp32"}


def test_queries_use_the_reduced_text_graph_only_where_its_both_graphs_run_passed(bundle):
    from runtime.path_choice import query_text_precision

    assert query_text_precision(bundle, "openvino", "int8") == "fp32"                  # nothing recorded
    assert query_text_precision(with_real_data(bundle, openvino_int8_int8=True), "openvino", "int8") == "int8"
    assert query_text_precision(with_real_data(bundle, openvino_int8_int8=False, openvino_int8=True),
                                "openvino", "int8") == "fp32"
    assert query_text_precision(bundle, "ort-cpu", "fp32") == "fp32"
    # the video path is gated by a passing run of either text variant, and dropped only when all failed
    both_passed = with_real_data(bundle, openvino_int8_int8=True)
    assert ("openvino", "int8") in gated_precisions(both_passed, require_real_data=True)
    one_failed = with_real_data(bundle, openvino_int8_int8=False, openvino_int8=True)
    assert ("openvino", "int8") in gated_precisions(one_failed, require_real_data=True)
    all_failed = with_real_data(bundle, openvino_int8_int8=False, openvino_int8=False)
    assert ("openvino", "int8") not in gated_precisions(all_failed)


def test_onnxruntime_int8_keeps_the_float_islands_float(bundle):
    """FLOAT_ISLAND_PATTERNS in the ONNX Runtime INT8 graph: those MatMuls stay float, the later blocks' are INT8."""
    import re

    model = onnx.load(str(bundle.path / "video.int8.onnx"), load_external_data=False)
    by_op: dict[str, list[str]] = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, []).append(node.name)
    for pattern in q.FLOAT_ISLAND_PATTERNS:
        assert not [n for op in q.QUANTIZED_ONNX_OPS for n in by_op.get(op, []) if re.fullmatch(pattern, n)], pattern
    float_matmuls = [n for n in by_op["MatMul"] if q.in_float_island(n)]
    assert "/visual/MatMul" in float_matmuls and "/visual/transformer/resblocks.0/mlp/c_fc/MatMul" in float_matmuls
    assert any("/transformerClip/" in n for n in float_matmuls)
    assert "/visual/transformer/resblocks.1/mlp/c_fc/MatMul_quant" in by_op["MatMulInteger"]
    assert "/visual/transformer/resblocks.1/mlp/c_fc/MatMul" not in by_op["MatMul"]


def test_nncf_ir_keeps_the_patch_embedding_projection_temporal_and_attention_products_float(bundle):
    """FLOAT_ISLAND_PATTERNS: no FakeQuantize feeds those ops, while the weight MatMuls of the blocks are quantized."""
    import re

    import openvino as ov

    model = ov.Core().read_model(str(bundle.path / "video.int8.xml"))
    fed_by_fq, seen = {}, set()
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "MatMul"):
            continue
        name = op.get_friendly_name()
        fed_by_fq[name] = any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())
    for pattern in q.FLOAT_ISLAND_PATTERNS:
        matching = [n for n in fed_by_fq if re.fullmatch(pattern, n)]
        seen.update(matching)
        assert not any(fed_by_fq[n] for n in matching), (pattern, [n for n in matching if fed_by_fq[n]])
    assert any(re.fullmatch(r".*/visual/conv1/.*", n) for n in seen) and any("transformerClip" in n for n in seen)
    assert any(fed for n, fed in fed_by_fq.items() if re.fullmatch(r".*/visual/transformer/.*/mlp/c_fc/MatMul", n))
