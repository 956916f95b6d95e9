"""`ts2net explain`, `runtime.explain` and `search --explain` on tiny bundles and generated clips.

Every number an explanation shows is checked against an independent source: the score against
`search` (and `similarity`), the weights against the formula of docs/bundle-format.md recomputed
here in float64, the frame times against the clip's known frame rate and length, the patch
positions against a model whose token selector provably keeps the brightest patches.
"""
from __future__ import annotations

import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import runtime
from cli.main import main
from runtime.explanation import ExplainError, explain, explain_indexed, figure_size_px
from runtime.frame_similarity import frame_scores, similarity
from runtime.index import build_index, open_index, search_index
from media import write_video
from retrieval_data import caption

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def index_dir(bundle_dir, colour_clips, tmp_path_factory) -> Path:
    """A float32 index of the session's six colour clips (1 to 5 sampled frames of 12)."""
    out = tmp_path_factory.mktemp("explain-index") / "index"
    build_index(bundle_dir, colour_clips, out, cache_dir=False, dtype="float32", progress=False)
    return out


def write_blocks_clip(path: Path, cells, seconds: float = 3.0, fps=10, size: int = 32) -> Path:
    """A dark square clip with white patch-sized blocks at grid cells (row, col), nearly lossless."""
    img = np.full((size, size, 3), 20, np.uint8)
    for row, col in cells:
        img[row * 8:row * 8 + 8, col * 8:col * 8 + 8] = 240

    def high_bit_rate(stream):
        stream.bit_rate = 4_000_000

    return write_video(path, (img for _ in range(int(round(seconds * float(fps))))), fps, configure=high_bit_rate)


def brightness_selector_model():
    """A tiny TS2-Net (4x4 patch grid, top_k 3, official frame mask) whose selector keeps the brightest patches.

    The ViT blocks are made identities (attention and MLP outputs zeroed), a patch token carries
    (b, -b, 1, -1, ramp) with b its mean normalised pixel, and the score predictor reads b
    through monotone steps; a tiny per-position ramp breaks ties on flat (padding) frames.
    """
    import torch

    import ts2net
    from ts2net.config import TS2NetConfig

    cfg = TS2NetConfig.preset("tiny", name="brightness-selector", frame_mask_mode="official")
    torch.manual_seed(0)
    model = ts2net.TS2Net(cfg).eval()
    vis = model.clip.visual
    with torch.no_grad():
        n = cfg.patch_size ** 2 * 3
        vis.conv1.weight.zero_()
        vis.conv1.weight[0] = 1.0 / n
        vis.conv1.weight[1] = -1.0 / n
        vis.class_embedding.zero_()
        vis.positional_embedding.zero_()
        vis.positional_embedding[:, 2] = 1.0
        vis.positional_embedding[:, 3] = -1.0
        vis.positional_embedding[:, 4] = 0.003 * torch.arange(cfg.tokens_per_image)
        for block in vis.transformer.resblocks:
            for layer in (block.attn.out_proj, block.mlp.c_proj):
                layer.weight.zero_()
                layer.bias.zero_()
        vis.proj.copy_(torch.eye(cfg.vision_width, cfg.embed_dim))
        predictor = model.visual_token_selector.score_predictor
        predictor.in_conv[0].reset_parameters()
        predictor.in_conv[1].weight.zero_()
        predictor.in_conv[1].weight[0, 0] = 0.25
        predictor.in_conv[1].weight[0, 4] = 1.0
        predictor.out_conv[0].weight.zero_()
        predictor.out_conv[0].weight[0, 0] = 1.0
        predictor.out_conv[2].weight.zero_()
        predictor.out_conv[2].weight[0, 0] = 1.0
    return model


@pytest.fixture(scope="session")
def selector_bundle(tmp_path_factory) -> Path:
    from export.exporter import export_bundle
    from ts2net.checkpoint import save_model

    root = tmp_path_factory.mktemp("selector")
    save_model(brightness_selector_model(), root / "model")
    export_bundle(root / "bundle", checkpoint=root / "model", progress=False)
    return root / "bundle"


def independent_terms(text, frames, mask, mode, logit_scale, factor, tokens_per_frame):
    """s_f, w_f and the score of one (video, text) pair from docs/bundle-format.md, in float64."""
    t = np.asarray(text, np.float64) / np.linalg.norm(text)
    e = np.asarray(frames, np.float64)
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    n = len(mask)
    m = np.asarray(mask)[(tokens_per_frame * np.arange(n)) % n] if mode == "official" else np.asarray(mask)
    s = e @ t
    u = s * m
    u = u / np.linalg.norm(u)
    u = np.where(m > 0, factor * u, -np.inf)
    w = np.exp(u - u.max())
    w /= w.sum()
    return s, w, logit_scale * float(w @ s), m.astype(bool)


# --------------------------------------------------------------------------------------------
# the shared similarity code
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fixed", "official"])
def test_frame_scores_are_the_terms_similarity_ranks_by(mode):
    rng = np.random.default_rng(3)
    nv, t, d, nt = 11, 12, 16, 5
    frames = rng.standard_normal((nv, t, d)).astype(np.float32)
    text = rng.standard_normal((nt, d)).astype(np.float32)
    mask = np.zeros((nv, t), np.int64)
    for v, valid in enumerate([12, 11, 5, 1, 12, 3, 7, 2, 12, 9, 4]):
        mask[v, :valid] = 1
    args = dict(logit_scale=100.0, frame_mask_mode=mode, tokens_per_frame=4, softmax_factor=4.0)
    full = similarity(text, frames, mask, **args, video_chunk=4, text_chunk=2)
    terms = frame_scores(text, frames, mask, **args, video_chunk=4, text_chunk=2)
    np.testing.assert_array_equal(terms.scores, full)              # the same blocks: bit for bit
    assert (terms.weights >= 0).all()
    for v in range(nv):
        for j in range(nt):
            s, w, score, counted = independent_terms(text[j], frames[v], mask[v], mode, 100.0, 4.0, 4)
            np.testing.assert_array_equal(terms.effective_mask[v], counted)
            np.testing.assert_allclose(terms.cosines[v, :, j], s, atol=1e-6)
            np.testing.assert_allclose(terms.weights[v, :, j], w, atol=1e-6)
            assert terms.weights[v, ~counted, j].max(initial=0.0) == 0.0
            assert terms.weights[v, counted, j].sum() == pytest.approx(1.0, abs=1e-6)
            assert terms.scores[j, v] == pytest.approx(score, abs=1e-4)
    # a subset of rows, in any order and with repeats, reproduces the full call's entries exactly
    some = frame_scores(text, frames, mask, **args, video_chunk=4, text_chunk=2, videos=[9, 2, 9])
    np.testing.assert_array_equal(some.scores, full[:, [9, 2, 9]])
    np.testing.assert_array_equal(some.weights, terms.weights[[9, 2, 9]])
    np.testing.assert_array_equal(some.cosines, terms.cosines[[9, 2, 9]])
    with pytest.raises(ValueError, match=r"videos must be row numbers of frame_embeds in \[0, 11\)"):
        frame_scores(text, frames, mask, **args, videos=[11])


# --------------------------------------------------------------------------------------------
# explain: numbers
# --------------------------------------------------------------------------------------------

def test_explanation_score_equals_search_and_times_follow_the_sampling_rule(bundle_dir, index_dir, tmp_path):
    index = open_index(index_dir)
    query = caption(3)
    hits = {h["video_id"]: h for h in search_index(index, [query], k=len(index))[0]["results"]}
    for row, video_id in enumerate(index.video_ids):
        path = index.video_path(row)
        direct = explain(bundle_dir, path, query)
        assert abs(direct.score - hits[video_id]["score"]) <= 1e-6, video_id
        data = json.loads(direct.write(tmp_path)[1].read_text())
        assert data["score"] == direct.score and data["rank"] is None
        # clip i lasts 1 + 0.8 i s at 10 fps: one sample every 10 frames, at whole seconds
        n_frames = int(round(10 * (1 + 0.8 * row)))
        expected = list(range(0, n_frames, 10))
        frames = data["frames"]
        assert [f["frame_number"] for f in frames if f["real"]] == expected
        assert [f["time_s"] for f in frames if f["real"]] == pytest.approx([k / 10 for k in expected])
        assert all(f["frame_number"] is None and f["time_s"] is None for f in frames if not f["real"])
        weights = np.array([f["weight"] for f in frames])
        counted = np.array([f["counted"] for f in frames])
        assert (weights >= 0).all() and weights[~counted].max(initial=0) == 0
        assert weights[counted].sum() == pytest.approx(1.0, abs=1e-6)
        assert data["similarity"]["frame_mask_mode"] == "fixed" and counted.tolist() == [f["real"] for f in frames]
        # the same numbers from the index: the search's score and rank exactly
        indexed = explain_indexed(index, video_id, query)
        assert indexed.score == hits[video_id]["score"] and indexed.rank == hits[video_id]["rank"]
        assert [f.weight for f in indexed.frames] == pytest.approx(weights.tolist(), abs=1e-6)


def test_non_integer_frame_rate_times_use_the_real_fps(bundle_dir, tmp_path):
    clip = write_blocks_clip(tmp_path / "ntsc.mp4", [(0, 0)], seconds=2.5, fps=Fraction(30000, 1001))
    data = json.loads(explain(bundle_dir, clip, "a white square").write(tmp_path)[1].read_text())
    real = [f for f in data["frames"] if f["real"]]
    # int(29.97) = 29: frames 0, 29, 58 of 75, shown at 29 k / 29.97 s (ahead of whole seconds)
    assert [f["frame_number"] for f in real] == [0, 29, 58]
    assert [f["time_s"] for f in real] == pytest.approx([0.0, 29 * 1001 / 30000, 58 * 1001 / 30000], abs=1e-9)
    assert data["video"]["fps"] == pytest.approx(30000 / 1001)


def test_patch_rows_and_cols_follow_the_graphs_row_major_order(selector_bundle, tmp_path):
    """Bright blocks in known cells: the graph keeps exactly those patches, and the explanation
    places them at (row, col) = divmod(index, 4), not transposed (the transposed cells differ)."""
    from runtime.encoder import BundleEncoder

    for cells in ([(0, 2), (1, 3), (3, 0)], [(2, 1), (0, 0), (3, 3)]):
        clip = write_blocks_clip(tmp_path / f"blocks{cells[0][0]}.mp4", cells, seconds=2.0)
        with BundleEncoder(selector_bundle) as encoder:
            graph = encoder.encode_video_files([clip], progress=False).patch_indices[0]
        wanted = sorted(r * 4 + c for r, c in cells)
        assert graph[:2].tolist() == [wanted, wanted]           # the two sampled frames
        data = json.loads(explain(selector_bundle, clip, "three white squares").write(tmp_path)[1].read_text())
        assert data["patch_grid"]["rows"] == data["patch_grid"]["cols"] == 4
        for frame, indices in zip(data["frames"], graph):
            assert [p["index"] for p in frame["patches"]] == indices.tolist()
            assert [p["token"] for p in frame["patches"]] == (indices + 1).tolist()
        for frame in data["frames"][:2]:
            assert sorted((p["row"], p["col"]) for p in frame["patches"]) == sorted(cells)
        assert outlined_cells(tmp_path / data["image"]["file"], slot=0, grid=4) == sorted(cells)


def outlined_cells(png: Path, slot: int, grid: int) -> list[tuple[int, int]]:
    """Grid cells of one thumbnail in the PNG that hold the yellow selection outline."""
    from runtime import explanation as ex

    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    row, col = divmod(slot, ex.COLUMNS)
    left = ex.MARGIN_IN + col * ex.PANEL_W_IN + (ex.PANEL_W_IN - ex.THUMB_IN) / 2
    top = ex.TITLE_IN + row * ex.PANEL_H_IN + ex.CAPTION_IN
    x0, y0, side = round(left * ex.DPI), round(top * ex.DPI), round(ex.THUMB_IN * ex.DPI)
    thumb = image[y0:y0 + side, x0:x0 + side]
    yellow = (thumb[..., 0] > 200) & (thumb[..., 1] > 180) & (thumb[..., 2] < 90)
    cell = side / grid
    found = []
    for r in range(grid):
        for c in range(grid):
            box = yellow[int(r * cell) + 2:int((r + 1) * cell) - 2, int(c * cell) + 2:int((c + 1) * cell) - 2]
            if box.sum() > 60:
                found.append((r, c))
    return found


def test_official_mask_weights_padding_slots_and_sums_to_one(selector_bundle, tmp_path):
    """A 2-frame clip under the official mask: bits 0, 4, 8 are read, so slots 0, 3, 6, 9 count
    (three of them padding) and the real slot 1 gets no weight."""
    clip = write_blocks_clip(tmp_path / "short.mp4", [(1, 1)], seconds=2.0)
    result = explain(selector_bundle, clip, "a white square")
    assert result.similarity["frame_mask_mode"] == "official"
    assert [f.real for f in result.frames] == [True, True] + [False] * 10
    counted = [f.slot for f in result.frames if f.counted]
    assert counted == [0, 3, 6, 9]
    weights = np.array([f.weight for f in result.frames])
    assert (weights >= 0).all() and weights[[1, 2, 4, 5, 7, 8, 10, 11]].max() == 0
    assert weights[counted].sum() == pytest.approx(1.0, abs=1e-6)
    png, _ = result.write(tmp_path)
    assert Image.open(png).size == figure_size_px(12)


# --------------------------------------------------------------------------------------------
# explain: files, CLI, search --explain
# --------------------------------------------------------------------------------------------

def test_cli_explain_writes_png_and_json(bundle_dir, colour_clips, tmp_path):
    clip = colour_clips / "video2.mp4"
    result = CliRunner().invoke(main, ["explain", "--bundle", str(bundle_dir), str(clip), caption(2),
                                       "--out", str(tmp_path), "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("score ")
    pngs, jsons = list(tmp_path.glob("*.png")), list(tmp_path.glob("*.json"))
    assert len(pngs) == len(jsons) == 1 and pngs[0].stem == jsons[0].stem
    data = json.loads(jsons[0].read_text())
    assert data["precision"] == "fp16" and data["backend"] == "ort-cpu" and data["query"] == caption(2)
    assert data["format"] == "ts2net-explanation" and len(data["frames"]) == 12
    assert (data["image"]["width"], data["image"]["height"]) == Image.open(pngs[0]).size == figure_size_px(12)
    assert Image.open(pngs[0]).size[0] >= 6 * 200  # six thumbnails a row, each at least 200 px wide
    assert all(len(f["patches"]) == 3 for f in data["frames"])
    # fp16 and fp32 agree closely; each equals its own precision's search
    fp32 = explain(bundle_dir, clip, caption(2))
    assert data["score"] == pytest.approx(fp32.score, abs=0.05)


def test_search_explain_writes_one_per_result_and_an_index_html(bundle_dir, index_dir, tmp_path):
    queries = [caption(1), "a dark screen"]
    out = tmp_path / "why"
    result = CliRunner().invoke(main, ["search", str(index_dir), *queries, "-k", "3", "--json", "--explain",
                                       str(out)])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output[:result.output.rindex("]") + 1])
    page = (out / "index.html").read_text()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 6 and len(list(out.glob("*.json"))) == 6
    for q, entry in enumerate(hits, start=1):
        for hit in entry["results"]:
            stem = f"q{q}-rank{hit['rank']:03d}-{hit['video_id']}"
            data = json.loads((out / f"{stem}.json").read_text())
            assert data["score"] == hit["score"] and data["rank"] == hit["rank"]   # bit for bit
            assert data["index"]["n_videos"] == 6 and data["query"] == entry["query"]
            assert f'src="{stem}.png"' in page and f'href="{stem}.json"' in page
    assert set(re.findall(r'src="([^"]+)"', page)) == {p.name for p in pngs}  # relative: opens from disk
    assert "http" not in page


# --------------------------------------------------------------------------------------------
# bad inputs: one clear line each
# --------------------------------------------------------------------------------------------

def _one_line_error(result, *fragments):
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_give_clear_one_line_errors(bundle_dir, index_dir, tmp_path, colour_clips):
    runner = CliRunner()
    clip = colour_clips / "video1.mp4"
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    _one_line_error(runner.invoke(main, ["explain", "--bundle", str(bundle_dir), str(garbage), "a query"]),
                    "cannot decode video", "broken.mp4")
    _one_line_error(runner.invoke(main, ["explain", "--bundle", str(bundle_dir), str(tmp_path / "none.mp4"),
                                         "a query"]), "file not found")
    for empty in ("", "   "):
        _one_line_error(runner.invoke(main, ["explain", "--bundle", str(bundle_dir), str(clip), empty]),
                        "query is empty")
    _one_line_error(runner.invoke(main, ["explain", "--index", str(index_dir), "video99", "a query"]),
                    "no video 'video99' in the index")

    # a bundle whose video graph (and manifest, consistently) lacks an output the explanation draws
    import onnx

    from runtime.files import sha256_file

    for output in ("patch_indices", "frame_embeds"):
        broken = tmp_path / f"no-{output}"
        shutil.copytree(bundle_dir, broken)
        graph = onnx.load(broken / "video.onnx")
        kept = [o for o in graph.graph.output if o.name != output]
        del graph.graph.output[:]
        graph.graph.output.extend(kept)
        onnx.save(graph, broken / "video.onnx")
        manifest = json.loads((broken / "manifest.json").read_text())
        entry = manifest["graphs"]["video"]["fp32"]
        entry["outputs"] = [o for o in entry["outputs"] if o["name"] != output]
        entry["sha256"], entry["bytes"] = sha256_file(broken / "video.onnx"), (broken / "video.onnx").stat().st_size
        (broken / "manifest.json").write_text(json.dumps(manifest))
        _one_line_error(runner.invoke(main, ["explain", "--bundle", str(broken), str(clip), "a query"]),
                        f"no `{output}` output", "re-export")
    with pytest.raises(ExplainError, match="query is empty"):
        runtime.explain(bundle_dir, clip, " ")


def test_changed_video_is_refused_from_the_index(bundle_dir, tmp_path, colour_clips):
    videos = tmp_path / "videos"
    shutil.copytree(colour_clips, videos)
    build_index(bundle_dir, videos, tmp_path / "index", cache_dir=False, progress=False)
    shutil.copy(videos / "video5.mp4", videos / "video0.mp4")
    result = CliRunner().invoke(main, ["explain", "--index", str(tmp_path / "index"), "video0", "a query"])
    _one_line_error(result, "changed since it was indexed", "video0.mp4")
    (videos / "video1.mp4").unlink()
    result = CliRunner().invoke(main, ["explain", "--index", str(tmp_path / "index"), "video1", "a query"])
    _one_line_error(result, "video1.mp4", "is missing")


def test_model_without_token_selection_is_explained_without_patches(tmp_path, colour_clips):
    """A CLS-only model (token_selection off) has no patch_indices output: the weights and cosines
    are still explained, the picture says that no patches are selected."""
    from export.exporter import export_bundle

    bundle = tmp_path / "cls-only"
    export_bundle(bundle, progress=False, token_selection=False)
    assert "patch_indices" not in [o["name"] for o in json.loads((bundle / "manifest.json").read_text())
                                   ["graphs"]["video"]["fp32"]["outputs"]]
    result = explain(bundle, colour_clips / "video3.mp4", caption(3))
    assert result.grid["top_k"] is None and all(f.patches == () for f in result.frames)
    assert sum(f.weight for f in result.frames if f.counted) == pytest.approx(1.0, abs=1e-6)
    png, js = result.write(tmp_path)
    assert Image.open(png).size == figure_size_px(12)
    assert all(f["patches"] == [] for f in json.loads(js.read_text())["frames"])


def test_non_finite_embeddings_are_refused(bundle_dir, colour_clips, monkeypatch):
    from runtime.encoder import BundleEncoder

    real = BundleEncoder.encode_frames

    def broken(self, frames, mask, progress=False):
        embeds, indices = real(self, frames, mask, progress)
        embeds[0, 0, 0] = np.nan
        return embeds, indices

    monkeypatch.setattr(BundleEncoder, "encode_frames", broken)
    with pytest.raises(ExplainError, match="non-finite numbers.*ts2net parity --backend ort-cpu --precision fp32"):
        explain(bundle_dir, colour_clips / "video1.mp4", "a query")
