"""Loading the three checkpoint formats, and the errors bad files give."""
from __future__ import annotations

import logging

import pytest
import torch

import ts2net
from factories import (TINY12, clip_state_dict, official_state_dict, random_model, round_all_clip_to_fp16,
                       round_clip_to_fp16,
                       tiny_config, write_clip_torchscript)
from ts2net.checkpoint import CheckpointError


def _outputs(model):
    gen = torch.Generator().manual_seed(1)
    cfg = model.cfg
    frames = torch.randn(2, cfg.max_frames, 3, cfg.image_size, cfg.image_size, generator=gen)
    mask = torch.ones(2, cfg.max_frames, dtype=torch.long)
    mask[1, 7:] = 0
    ids = torch.zeros(2, cfg.max_words, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, torch.tensor([320, 786, 533]), 49407
    with torch.no_grad():
        text = model.encode_text(ids)
        video, idx = model.encode_video(frames, mask)
        return text, video, idx, model.similarity(text, video, mask)


def _assert_same(a, b):
    for x, y in zip(_outputs(a), _outputs(b)):
        assert torch.equal(x, y)


def test_official_checkpoint_round_trip(tmp_path, caplog):
    cfg = ts2net.TS2NetConfig(**TINY12, frame_mask_mode="official")
    model = round_clip_to_fp16(random_model(cfg))
    state = official_state_dict(model)
    assert "clip.visual.transformer.resblocks.10.attn.net.in_proj_weight" in state
    assert "clip.visual.transformer.resblocks.9.attn.in_proj_weight" in state
    assert state["clip.visual.conv1.weight"].dtype == torch.float16
    path = tmp_path / "pytorch_model.bin.4"
    torch.save(state, path)
    with caplog.at_level(logging.DEBUG, logger="ts2net.checkpoint"):
        loaded = ts2net.load_model(path)
    assert "ignoring 2 unused official entries" in caplog.text
    assert not loaded.training and loaded.cfg.frame_mask_mode == "official"
    assert loaded.cfg.vision_layers == 12 and loaded.cfg.temporal_layers == 2
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    _assert_same(model, loaded)
    assert ts2net.load_model(path, frame_mask_mode="fixed").cfg.frame_mask_mode == "fixed"


def test_clip_state_dict_and_torchscript_initialise_like_official_training(tmp_path):
    model = round_all_clip_to_fp16(random_model(tiny_config(temporal_layers=2)))
    plain = tmp_path / "clip_state.pt"
    torch.save(clip_state_dict(model), plain)
    archive = write_clip_torchscript(model, tmp_path / "ViT-tiny.pt")
    for path in (plain, archive):
        torch.manual_seed(5)
        loaded = ts2net.load_model(path)
        assert loaded.cfg.frame_mask_mode == "fixed"
        for key, value in model.state_dict().items():
            if key.startswith("clip."):
                assert torch.equal(loaded.state_dict()[key], value), key
        assert torch.equal(loaded.frame_position_embeddings.weight, model.clip.positional_embedding)
        for i in range(2):
            for name, value in model.clip.transformer.resblocks[i].state_dict().items():
                assert torch.equal(loaded.transformerClip.resblocks[i].state_dict()[name], value)
        text_a, _, _, _ = _outputs(model)
        text_b, _, _, _ = _outputs(loaded)
        assert torch.equal(text_a, text_b)


def test_clip_init_keeps_fresh_temporal_blocks_beyond_text_depth(tmp_path):
    model = random_model(tiny_config(temporal_layers=2))   # text tower has 2 blocks
    torch.save(clip_state_dict(model), tmp_path / "clip.pt")
    loaded = ts2net.load_model(tmp_path / "clip.pt", temporal_layers=4)
    assert len(loaded.transformerClip.resblocks) == 4


def test_safetensors_round_trip(tmp_path):
    model = random_model(tiny_config(frame_mask_mode="official", name="mine"))
    ts2net.save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    for path in (tmp_path / "ckpt", tmp_path / "ckpt" / "model.safetensors"):
        loaded = ts2net.load_model(path)
        assert loaded.cfg == model.cfg
        _assert_same(model, loaded)


def test_sizes_are_inferred_from_shapes(tmp_path):
    cfg = tiny_config(image_size=48, patch_size=16, vision_layers=2, text_layers=3)
    torch.save(official_state_dict(random_model(cfg)), tmp_path / "m.bin")
    loaded = ts2net.load_model(tmp_path / "m.bin")
    assert (loaded.cfg.image_size, loaded.cfg.patch_size, loaded.cfg.vision_layers, loaded.cfg.text_layers) == \
        (48, 16, 2, 3)


def test_wrong_keys_and_shapes_are_all_listed(tmp_path):
    state = official_state_dict(random_model(tiny_config()))
    del state["clip.ln_final.bias"]
    del state["visual_token_selector.score_predictor.out_conv.2.weight"]
    state["clip.visual.proj"] = torch.zeros(64, 32)
    state["clip.bogus.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(CheckpointError) as err:
        ts2net.load_model(tmp_path / "bad.bin")
    text = str(err.value)
    assert "bad.bin" in text
    assert "2 missing" in text and "clip.ln_final.bias" in text and "out_conv.2.weight" in text
    assert "1 unexpected" in text and "clip.bogus.weight" in text
    assert "mis-shaped" in text and "clip.visual.proj: checkpoint (64, 32) vs model (64, 64)" in text


def test_non_checkpoints_give_clear_errors(tmp_path):
    junk = tmp_path / "notes.bin"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.bin: not a readable PyTorch checkpoint"):
        ts2net.load_model(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        ts2net.load_model(tmp_path / "missing.bin")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="neither a TS2-Net checkpoint"):
        ts2net.load_model(tmp_path / "other.bin")
    torch.save([1, 2, 3], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        ts2net.load_model(tmp_path / "list.bin")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        ts2net.load_model(tmp_path / "dir")


def test_pickles_are_loaded_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))
    torch.save({"clip.x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="evil.bin"):
        ts2net.load_model(tmp_path / "evil.bin")


def test_official_meanp_checkpoint_loads_as_meanp(tmp_path):
    """CLIP4Clip/TS2-Net runs with --sim_header meanP have no temporal module keys at all."""
    cfg = tiny_config(sim_header="meanP", token_selection=False)
    model = random_model(cfg)
    torch.save(official_state_dict(model), tmp_path / "pytorch_model.bin.0")
    loaded = ts2net.load_model(tmp_path / "pytorch_model.bin.0")
    assert loaded.cfg.sim_header == "meanP" and not loaded.cfg.token_selection
    ts2net.save_model(loaded, tmp_path / "ours")
    again = ts2net.load_model(tmp_path / "ours")
    assert again.cfg.sim_header == "meanP"
    for key, value in model.state_dict().items():
        assert torch.allclose(again.state_dict()[key], value.half().float() if "conv1" in key else value,
                              atol=1e-3), key
