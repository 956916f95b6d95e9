"""The PyTorch model against independent re-computations of the official semantics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ts2net
from factories import TINY12, random_model, tiny_config
from ts2net.model import TokenShift, token_frame_mask
from ts2net.selection import hard_topk_ascending

SOT, EOT = 49406, 49407


def _ids(lengths, length=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        n = min(n, length - 2)
        ids[row, 0] = SOT
        ids[row, 1:1 + n] = torch.randint(1, 49000, (n,), generator=gen)
        ids[row, 1 + n] = EOT
    return ids


def _video_batch(valid_counts, cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(len(valid_counts), cfg.max_frames, 3, cfg.image_size, cfg.image_size, generator=gen)
    mask = torch.zeros(len(valid_counts), cfg.max_frames, dtype=torch.long)
    for row, n in enumerate(valid_counts):
        mask[row, :n] = 1
        frames[row, n:] = 0
    return frames, mask


# ----------------------------------------------------------------------------- token shift
@pytest.mark.parametrize("frames,tokens", [(12, 50), (12, 17), (4, 197), (3, 10)])
def test_token_shift_moves_exactly_the_specified_tokens(frames, tokens):
    width, videos = 5, 2
    y = torch.randn(videos * frames, tokens, width)
    z = TokenShift(frames, tokens, fold_div=7)(y).reshape(videos, frames, tokens, width)
    y = y.reshape(videos, frames, tokens, width)
    fold = tokens // 7
    forward, backward = set(range(1, tokens, fold)), set(range(4, tokens, fold))
    for t in range(frames):
        for n in range(tokens):
            source = t  # element-wise expectation computed directly from the rule
            if n in forward and t >= 1:
                source = t - 1
            if n in backward and t <= frames - 2:
                source = t + 1   # backward assignment comes second in the official code
            assert torch.equal(z[:, t, n], y[:, source, n]), (t, n)


def test_token_shift_for_vit_b32_moves_14_of_49_patches_and_never_cls():
    shift = TokenShift(12, 50, 7)
    source_frame = (shift.index.reshape(12, 50) // 50)
    moved = (source_frame != torch.arange(12).unsqueeze(1))
    assert moved[1:-1].sum(dim=1).tolist() == [14] * 10
    assert not moved[:, 0].any()
    assert moved[0].sum() == 7 and moved[-1].sum() == 7   # edges keep the tokens that would come from outside


def test_shift_is_on_attention_input_only_and_padded_frames_take_part():
    cfg = tiny_config()
    model = random_model(cfg)
    frames, mask = _video_batch([3], cfg)
    frames[0, 5] = torch.randn_like(frames[0, 5])  # content in a padded frame
    changed = frames.clone()
    changed[0, 4] += 1.0                           # padded frame next to frame 3... and 5
    with torch.no_grad():
        a, _ = model.encode_video(frames, mask)
        b, _ = model.encode_video(changed, mask)
        no_shift = random_model(cfg.replace(token_shift=False))
        c, _ = no_shift.encode_video(frames, mask)
        d, _ = no_shift.encode_video(changed, mask)
    # with the shift, a padded frame's tokens reach its neighbours (frames 3 and 5)
    assert not torch.allclose(a[0, 3], b[0, 3])
    # without it, frame 3's CLS path sees no token of frame 4 before the temporal transformer, and
    # frame 4 is masked as a key there, so frame 3 is unaffected
    assert torch.allclose(c[0, 3], d[0, 3], atol=1e-6)


def test_shift_layers_default_to_last_two_blocks():
    cfg = ts2net.TS2NetConfig(**TINY12)
    model = ts2net.TS2Net(cfg)
    shifted = [i for i, block in enumerate(model.clip.visual.transformer.resblocks) if block.shift is not None]
    assert shifted == [10, 11]
    assert cfg.replace(shift_layers=[3]).resolved_shift_layers == (3,)
    assert cfg.replace(token_shift=False).resolved_shift_layers == ()


# ----------------------------------------------------------------------------- selection
def test_hard_topk_returns_top_scores_in_ascending_index_order():
    scores = torch.randn(500, 49)
    idx = hard_topk_ascending(scores, 3)
    expected = torch.topk(scores, 3).indices.sort(dim=-1).values
    assert torch.equal(idx, expected)
    assert (idx[:, 1:] > idx[:, :-1]).all()


def test_encode_video_selects_cls_plus_topk_tokens_by_score():
    cfg = tiny_config()
    model = random_model(cfg)
    frames, mask = _video_batch([12, 4], cfg)
    with torch.no_grad():
        tokens = model.clip.visual(frames.flatten(0, 1))
        scores = model.visual_token_selector.score_predictor(tokens)[:, 1:]
        _, idx = model.encode_video(frames, mask)
    expected = torch.topk(scores, cfg.top_k).indices.sort(-1).values.reshape(2, cfg.max_frames, cfg.top_k)
    assert torch.equal(idx, expected)


def test_score_predictor_matches_its_definition():
    cfg = tiny_config()
    model = random_model(cfg)
    pred = model.visual_token_selector.score_predictor
    x = torch.randn(4, cfg.tokens_per_image, cfg.embed_dim)
    with torch.no_grad():
        ln = torch.nn.functional.layer_norm(x, (cfg.embed_dim,), pred.in_conv[0].weight, pred.in_conv[0].bias, 1e-5)
        h = torch.nn.functional.gelu(ln @ pred.in_conv[1].weight.t())            # exact erf GELU
        cat = torch.cat([h, h[:, :1].expand_as(h)], -1)
        g = torch.nn.functional.gelu(cat @ pred.out_conv[0].weight.t())
        expected = torch.tanh(g @ pred.out_conv[2].weight.t()).squeeze(-1)
        assert torch.allclose(pred(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------- text
def test_text_pooling_takes_the_first_eot():
    cfg = tiny_config()
    model = random_model(cfg)
    ids = _ids([5, 30, 40])
    literal = ids[0].clone()
    literal[3] = EOT                                  # a literal <|endoftext|> before the real one
    ids = torch.cat([ids, literal[None]])
    with torch.no_grad():
        out = model.encode_text(ids)
        x = model.clip.token_embedding(ids) + model.clip.positional_embedding[:32]
        x = model.clip.transformer(x, model.clip.causal_mask[:32, :32])
        full = model.clip.ln_final(x) @ model.clip.text_projection
    for row, position in enumerate([6, 31, 31, 3]):
        assert torch.allclose(out[row], full[row, position], atol=1e-6), row


def test_text_encoder_is_causal():
    model = random_model(tiny_config())
    ids = _ids([6])
    later = ids.clone()
    later[0, 20] = 1234                                 # after the EOT: must not change the output
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), model.encode_text(later), atol=1e-6)


# ----------------------------------------------------------------------------- temporal + similarity
def test_token_mask_modes():
    mask = torch.tensor([[1, 1, 0]])
    assert token_frame_mask(mask, 2, "fixed").tolist() == [[1, 1, 1, 1, 0, 0]]
    assert token_frame_mask(mask, 2, "official").tolist() == [[1, 1, 0, 1, 1, 0]]


def numpy_similarity(text, frames, mask, logit_scale, mode, m=4, factor=4.0):
    """Independent loop implementation of docs/semantics.md rows 6-7."""
    text, frames = np.asarray(text, np.float64), np.asarray(frames, np.float64)
    nv, t_frames, _ = frames.shape
    out = np.zeros((len(text), nv))
    for v in range(nv):
        if mode == "official":
            eff = np.array([mask[v][(m * f) % t_frames] for f in range(t_frames)])
        else:
            eff = np.asarray(mask[v])
        for t in range(len(text)):
            tn = text[t] / np.linalg.norm(text[t])
            s = np.array([frames[v, f] @ tn / np.linalg.norm(frames[v, f]) for f in range(t_frames)])
            u = s * eff
            u = u / np.sqrt((u ** 2).sum())
            u = np.where(eff > 0, u, -1e18) * factor
            w = np.exp(u - u.max())
            w /= w.sum()
            out[t, v] = logit_scale * (w * s).sum()
    return out


@pytest.mark.parametrize("mode", ["official", "fixed"])
def test_similarity_matches_numpy_reference(mode):
    cfg = tiny_config(frame_mask_mode=mode)
    model = random_model(cfg)
    frames, mask = _video_batch([1, 5, 11, 12], cfg)
    ids = _ids([3, 9, 28])
    with torch.no_grad():
        text = model.encode_text(ids)
        video, _ = model.encode_video(frames, mask)
        sim = model.similarity(text, video, mask)
    expected = numpy_similarity(text.numpy(), video.numpy(), mask.numpy(), model.clip.logit_scale.exp().item(), mode)
    np.testing.assert_allclose(sim.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_official_mask_quirk_changes_short_videos_only():
    official = random_model(tiny_config(frame_mask_mode="official"))
    fixed = random_model(tiny_config(frame_mask_mode="fixed"))
    frames, mask = _video_batch([12, 5], official.cfg)
    ids = _ids([4])
    with torch.no_grad():
        a = official.similarity(official.encode_text(ids), official.encode_video(frames, mask)[0], mask)
        b = fixed.similarity(fixed.encode_text(ids), fixed.encode_video(frames, mask)[0], mask)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5)
    assert not torch.allclose(a[:, 1], b[:, 1], atol=1e-3)


def test_temporal_transformer_reproduced_by_hand():
    cfg = tiny_config(frame_mask_mode="fixed")
    model = random_model(cfg)
    frames, mask = _video_batch([7], cfg)
    with torch.no_grad():
        tokens = model.clip.visual(frames.flatten(0, 1))
        kept, _ = model.visual_token_selector(tokens)
        v = kept.reshape(1, -1, cfg.embed_dim)
        h = v + model.frame_position_embeddings.weight[: v.shape[1]]
        tok_mask = mask.repeat_interleave(4, dim=1).float()
        for block in model.transformerClip.resblocks:
            y = torch.nn.functional.layer_norm(h, (cfg.text_width,), block.ln_1.weight, block.ln_1.bias, 1e-12)
            mha = torch.nn.MultiheadAttention(cfg.text_width, cfg.text_heads, batch_first=True)
            mha.in_proj_weight.copy_(block.attn.in_proj_weight)
            mha.in_proj_bias.copy_(block.attn.in_proj_bias)
            mha.out_proj.load_state_dict(block.attn.out_proj.state_dict())
            attn_mask = ((1 - tok_mask) * -1e6).expand(v.shape[1], -1)
            h = h + mha(y, y, y, attn_mask=attn_mask, need_weights=False)[0]
            h = h + block.mlp(torch.nn.functional.layer_norm(h, (cfg.text_width,), block.ln_2.weight,
                                                             block.ln_2.bias, 1e-12))
        expected = (h + v)[:, ::4]
        got, _ = model.encode_video(frames, mask)
    assert torch.allclose(got, expected, atol=1e-5)


def test_training_forward_gives_symmetric_cross_entropy_and_gradients():
    cfg = tiny_config(perturbed_samples=20)
    model = random_model(cfg).train()
    frames, mask = _video_batch([12, 6, 2], cfg)
    ids = _ids([4, 8, 12])
    torch.manual_seed(0)
    loss = model(ids, frames, mask)
    loss.backward()
    assert loss.item() > 0
    assert model.visual_token_selector.score_predictor.out_conv[2].weight.grad.abs().sum() > 0
    sim = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    expected = (torch.nn.functional.cross_entropy(sim, torch.arange(2))
                + torch.nn.functional.cross_entropy(sim.t(), torch.arange(2))) / 2
    assert torch.isclose(ts2net.contrastive_loss(sim), expected)


def test_encode_video_rejects_wrong_frame_count():
    model = random_model(tiny_config())
    with pytest.raises(ValueError, match="max_frames"):
        model.encode_video(torch.zeros(1, 5, 3, 32, 32), torch.ones(1, 5, dtype=torch.long))


def test_config_validation_lists_every_problem():
    with pytest.raises(ValueError) as err:
        tiny_config(image_size=30, embed_dim=128, frame_mask_mode="bogus")
    text = str(err.value)
    assert "image_size=30" in text and "embed_dim=128" in text and "bogus" in text


# ----------------------------------------------------------------------------- meanP (CLIP4Clip baseline)
def test_meanp_video_embedding_is_clip4clips_mean_of_normalised_cls():
    cfg = tiny_config(sim_header="meanP", token_selection=False, token_shift=False)
    model = random_model(cfg)
    assert not any(k.startswith(("transformerClip.", "frame_position_embeddings.")) for k in model.state_dict())
    frames, mask = _video_batch([cfg.max_frames, 3, 1], cfg, seed=4)
    ids = _ids([3, 9, 5, 1])
    with torch.no_grad():
        frame_embeds, indices = model.encode_video(frames, mask)
        text = model.encode_text(ids)
        sim = model.similarity(text, frame_embeds, mask)
        cls = model.clip.visual(frames.flatten(0, 1))[:, 0].reshape(3, cfg.max_frames, -1)
    assert indices is None
    # CLIP4Clip meanP by hand: normalise each frame, mean over the valid ones, normalise, cosine
    expected = np.zeros((4, 3))
    for v in range(3):
        unit = [cls[v, t] / cls[v, t].norm() for t in range(cfg.max_frames) if mask[v, t]]
        video = torch.stack(unit).mean(0)
        for t in range(4):
            expected[t, v] = float(torch.dot(text[t] / text[t].norm(), video / video.norm()))
    scale = float(model.clip.logit_scale.exp().detach())
    np.testing.assert_allclose(sim.numpy() / scale, expected, atol=1e-5)
    # the order of the frames cannot matter: mean pooling sees a set, not a sequence
    reversed_frames = frames.clone()
    reversed_frames[0] = frames[0].flip(0)
    with torch.no_grad():
        again = model.similarity(text, model.encode_video(reversed_frames, mask)[0], mask)
    np.testing.assert_allclose(again[:, 0].numpy(), sim[:, 0].numpy(), atol=1e-5)


def test_seqtransf_sees_frame_order_where_meanp_does_not():
    """Reversing a video's frames must not merely reverse its frame embeddings (order is visible).

    An order-blind temporal module is permutation-equivariant: E(reversed) == reversed(E). With the
    frame positions at CLIP's 0.01 init the relative gap was ~1 %; from-scratch init makes it count.
    """
    frames_gap = {}
    for header in ("seqTransf", "meanP"):
        cfg = tiny_config(token_shift=False, token_selection=False, sim_header=header)
        model = random_model(cfg)
        frames, mask = _video_batch([cfg.max_frames], cfg, seed=5)
        with torch.no_grad():
            e = model.encode_video(frames, mask)[0]
            r = model.encode_video(frames.flip(1), mask)[0]
        frames_gap[header] = float((r - e.flip(1)).norm() / e.norm())
    assert frames_gap["seqTransf"] > 0.1, frames_gap
    assert frames_gap["meanP"] < 1e-6, frames_gap


def test_meanp_config_rules():
    with pytest.raises(ValueError, match="sim_header='meanP' pools only the frame CLS"):
        tiny_config(sim_header="meanP", token_shift=False)
    with pytest.raises(ValueError, match="sim_header='seqLSTM'"):
        tiny_config(sim_header="seqLSTM")
    assert tiny_config(sim_header="meanP", token_selection=False).tokens_per_frame == 1
