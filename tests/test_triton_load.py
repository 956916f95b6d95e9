"""The load test's bookkeeping without a server: distinct requests, and the equality gate that judges responses."""
from __future__ import annotations

import numpy as np

from runtime.bundle import open_bundle
from runtime.triton.load import Request, build_requests, compare, local_outputs


def test_requests_are_distinct_interleaved_and_answered_locally(bundle_dir):
    bundle = open_bundle(bundle_dir)
    requests = build_requests(bundle, texts=12, videos=4, seed=1)
    assert len({r.id for r in requests}) == 16
    assert [r.graph for r in requests[:8]] == ["text", "text", "text", "video"] * 2
    ids = np.concatenate([r.feed["input_ids"] for r in requests if r.graph == "text"])
    assert len({row.tobytes() for row in ids}) == 12
    for request in (r for r in requests if r.graph == "video"):
        valid = int(request.feed["frame_mask"].sum())
        assert 1 <= valid <= bundle.max_frames and not request.feed["frames"][0, valid:].any()
    local_outputs(bundle, requests, "ort-cpu", "fp32")
    assert all(compare(r, r.expected, "fp32") == [] for r in requests)


def test_compare_applies_the_precision_gate():
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, 4, 8)).astype(np.float32)
    indices = np.array([[[1, 5, 7]] * 4], np.int64)
    request = Request("v0001", "video", {}, {"frame_embeds": embeds, "patch_indices": indices})
    assert compare(request, {"frame_embeds": embeds + 5e-5, "patch_indices": indices[..., ::-1]}, "fp32") == []
    problems = compare(request, {"frame_embeds": embeds + 1e-3, "patch_indices": indices + 1}, "fp32")
    assert any("v0001 frame_embeds: max abs error" in p for p in problems)
    assert any("v0001 patch_indices: selection agreement 0.0000" in p for p in problems)
    # fp16 rows: cosine gates only, so a small absolute drift passes
    assert compare(request, {"frame_embeds": embeds * 1.01, "patch_indices": indices}, "fp16") == []
    problems = compare(request, {"frame_embeds": embeds[:, :3], "patch_indices": indices}, "fp32")
    assert problems == ["v0001 frame_embeds: expected float32 [1, 4, 8], got (dtype('float32'), [1, 3, 8])"]
    nan = embeds.copy()
    nan[0, 0, 0] = np.nan
    assert compare(request, {"frame_embeds": nan, "patch_indices": indices}, "fp32") == [
        "v0001 frame_embeds: non-finite values"]


def test_a_precision_that_failed_export_parity_is_not_served(bundle_dir, tmp_path):
    import json
    import shutil

    import pytest

    from runtime.bundle import BundleError
    from runtime.triton.server import TritonServer

    bundle = shutil.copytree(bundle_dir, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["parity"]["fp16"] = dict(manifest["parity"]["fp16"], passed=False, failures=["cosine_min 0.9 < 0.99"])
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fp16 graphs failed the export parity check .cosine_min 0.9 < 0.99"):
        TritonServer(bundle, precision="fp16")
    assert TritonServer(bundle).batching["text"] == {"max_batch": 64, "preferred": [16, 64], "queue_delay_us": 2000}
