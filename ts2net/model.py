"""TS2-Net (Token Shift and Selection Transformer) in one readable file.

Reproduces the official implementation's inference number for number (see
`docs/semantics.md`), with one deliberate difference: token
selection at inference is *hard* top-K (the sigma -> 0 limit of the official perturbed top-K),
so the exported graphs are deterministic. Parameter names mirror the official checkpoints
(`clip.visual...`, `transformerClip...`, `visual_token_selector...`) so loading is a key check,
not a translation table.

Shapes: B videos (or texts), T = max_frames, N = G*G + 1 tokens per frame, K = top_k,
M = K + 1 tokens kept per frame, Wv / Wt = vision / text width, D = embed dim, L = max_words.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from runtime.bundle_format import MASKED_FRAME_VALUE  # masked frames before the frame softmax

from .config import TS2NetConfig
from .selection import hard_topk_ascending, perturbed_topk

FRAME_POSITION_INIT_STD = 0.5  # from-scratch init of frame_position_embeddings (see reset_parameters)
TEMPORAL_MASK_VALUE = -1e6  # additive attention mask of the temporal transformer (official value)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter layout (packed q,k,v)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        # (B, L, W) -> (B, H, L, hd)
        q, k, v = (t.reshape(batch, length, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)  # (B, H, L, L)
        if mask is not None:
            scores = scores + mask
        out = scores.softmax(dim=-1) @ v  # (B, H, L, hd)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class TokenShift(nn.Module):
    """Moves whole patch tokens between neighbouring frames (docs/semantics.md, row 4).

    Forward positions 1, 1+fold, ... take the previous frame's token; backward positions
    4, 4+fold, ... take the next frame's token (assigned second, so it wins where both apply);
    CLS never moves and the edge frames keep their own tokens. Implemented as one gather with a
    constant index, which is exact and exports to a single ONNX Gather.
    """

    def __init__(self, frames: int, tokens: int, fold_div: int):
        super().__init__()
        self.frames, self.tokens = frames, tokens
        fold = tokens // fold_div
        source_frame = torch.arange(frames).unsqueeze(1).repeat(1, tokens)  # (T, N): frame each token comes from
        forward_positions = torch.arange(1, tokens, fold)
        backward_positions = torch.arange(4, tokens, fold)
        source_frame[1:, forward_positions] = torch.arange(0, frames - 1).unsqueeze(1)
        source_frame[:-1, backward_positions] = torch.arange(1, frames).unsqueeze(1)
        index = source_frame * tokens + torch.arange(tokens)  # flat index into (T*N)
        self.register_buffer("index", index.reshape(-1), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # y: (B*T, N, W) -> (B, T*N, W) -> gather -> (B*T, N, W)
        width = y.shape[-1]
        flat = y.reshape(-1, self.frames * self.tokens, width)
        return flat.index_select(1, self.index).reshape(-1, self.tokens, width)


class ResidualAttentionBlock(nn.Module):
    """CLIP pre-LN block; an optional token shift acts on the attention input only."""

    def __init__(self, width: int, heads: int, ln_eps: float = 1e-5, shift: TokenShift | None = None):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.shift = shift

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        if self.shift is not None:
            y = self.shift(y)  # z is query, key and value; the residual keeps the unshifted x
        x = x + self.attn(y, mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, ln_eps: float = 1e-5,
                 shifts: dict[int, TokenShift] | None = None):
        super().__init__()
        shifts = shifts or {}
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, ln_eps, shifts.get(i)) for i in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: TS2NetConfig):
        super().__init__()
        width, scale = cfg.vision_width, cfg.vision_width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.tokens_per_image, width))
        self.ln_pre = nn.LayerNorm(width)
        shifts = {i: TokenShift(cfg.max_frames, cfg.tokens_per_image, cfg.shift_fold_div)
                  for i in cfg.resolved_shift_layers}
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads, shifts=shifts)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B*T, 3, S, S) -> tokens (B*T, N, D) after ln_post and proj on every token
        x = self.conv1(images)                                   # (B*T, Wv, G, G)
        x = x.flatten(2).transpose(1, 2)                         # (B*T, G*G, Wv), row-major patches
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B*T, N, Wv)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x) @ self.proj                       # (B*T, N, D)


class CLIP(nn.Module):
    """The two CLIP towers, with OpenAI CLIP's parameter names."""

    def __init__(self, cfg: TS2NetConfig):
        super().__init__()
        self.visual = VisionTransformer(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        causal = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (B, L) int64 -> (B, D), the projected feature at the first largest id (EOT)
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.transformer(x, self.causal_mask[:length, :length])
        x = self.ln_final(x) @ self.text_projection              # (B, L, D)
        # argmax returns the first occurrence of the maximum; int32 keeps it exact and TensorRT-friendly
        eot = input_ids.to(torch.int32).argmax(dim=-1)           # (B,)
        index = eot.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1])
        return x.gather(1, index).squeeze(1)


class ScorePredictor(nn.Module):
    """Per-token informativeness score in [-1, 1] from the token and its frame's CLS token."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2, bias=False), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(dim, dim // 2, bias=False), nn.GELU(),
                                      nn.Linear(dim // 2, 1, bias=False), nn.Tanh())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (B*T, N, D) -> scores (B*T, N)
        h = self.in_conv(tokens)                                  # (B*T, N, D/2)
        h = torch.cat([h, h[:, :1].expand_as(h)], dim=-1)         # [own half, CLS half] (B*T, N, D)
        return self.out_conv(h).squeeze(-1)


class TokenSelector(nn.Module):
    """Keeps each frame's CLS token plus its top-K patch tokens (docs/semantics.md, row 5)."""

    def __init__(self, cfg: TS2NetConfig):
        super().__init__()
        self.cfg = cfg
        self.score_predictor = ScorePredictor(cfg.embed_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # tokens (B*T, N, D) -> kept (B*T, M, D), patch indices (B*T, K) or None when perturbed
        cls, patches = tokens[:, :1], tokens[:, 1:]
        scores = self.score_predictor(tokens)[:, 1:]              # CLS score computed and ignored
        if self.training:
            weights = perturbed_topk(scores, self.cfg.top_k, self.cfg.perturbed_samples, self.cfg.perturbed_sigma,
                                     gradient=self.cfg.perturbed_gradient)  # (B*T, K, N-1), convex mixes
            return torch.cat([cls, weights @ patches], dim=1), None
        indices = hard_topk_ascending(scores, self.cfg.top_k)    # (B*T, K), raster order
        gather = indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        return torch.cat([cls, patches.gather(1, gather)], dim=1), indices


def token_frame_mask(frame_mask: torch.Tensor, tokens_per_frame: int, mode: str) -> torch.Tensor:
    """Per-token mask (B, T*M) of the temporal transformer.

    "fixed" repeats each frame's bit for its M tokens; "official" reproduces the official code,
    which tiles the whole T-long mask M times, so token p reads frame_mask[p mod T].
    """
    if mode == "official":
        return frame_mask.repeat(1, tokens_per_frame)
    return frame_mask.repeat_interleave(tokens_per_frame, dim=1)


def effective_frame_mask(frame_mask: torch.Tensor, tokens_per_frame: int, mode: str) -> torch.Tensor:
    """The frame mask the similarity uses: each frame's CLS-slot bit of `token_frame_mask`."""
    return token_frame_mask(frame_mask, tokens_per_frame, mode)[:, ::tokens_per_frame]


def frame_weighted_similarity(text_embeds: torch.Tensor, frame_embeds: torch.Tensor, frame_mask: torch.Tensor,
                              logit_scale: torch.Tensor, softmax_factor: float) -> torch.Tensor:
    """Section 7: [Nt, Nv] logit-scaled similarity; `frame_mask` is the *effective* mask."""
    t = text_embeds / text_embeds.norm(dim=-1, keepdim=True)          # (Nt, D)
    e = frame_embeds / frame_embeds.norm(dim=-1, keepdim=True)        # (Nv, T, D)
    s = torch.einsum("vfd,td->vft", e, t)                             # (Nv, T, Nt)
    m = frame_mask.to(torch.bool).unsqueeze(-1)                       # (Nv, T, 1)
    u = s * m
    u = u / u.norm(dim=1, keepdim=True)
    u = u.masked_fill(~m, MASKED_FRAME_VALUE)
    w = torch.softmax(softmax_factor * u, dim=1)
    return logit_scale * (w * s).sum(dim=1).t()                       # (Nt, Nv)


class TS2Net(nn.Module):
    def __init__(self, cfg: TS2NetConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.clip = CLIP(cfg)
        if cfg.sim_header == "seqTransf":  # meanP has no temporal module (and, as officially, no such keys)
            self.frame_position_embeddings = nn.Embedding(cfg.context_length, cfg.text_width)
            self.transformerClip = Transformer(cfg.text_width, cfg.temporal_layers, cfg.text_heads, ln_eps=1e-12)
        self.visual_token_selector = TokenSelector(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP-style initialisation, used when a model is trained from scratch."""
        cfg = self.cfg
        nn.init.normal_(self.clip.token_embedding.weight, std=0.02)
        nn.init.normal_(self.clip.positional_embedding, std=0.01)
        towers = [(self.clip.transformer, cfg.text_width, cfg.text_layers),
                  (self.clip.visual.transformer, cfg.vision_width, cfg.vision_layers)]
        if cfg.sim_header == "seqTransf":
            # Not CLIP's 0.01: the table is added to projected tokens of per-dimension std ~1, and at
            # 1 % of that the temporal transformer is all but blind to frame order -- a from-scratch
            # demo run never escaped it (table std 0.017 after 1,870 steps, motion pairs at chance).
            # Official training copies CLIP's trained text positions here instead (load_model --clip).
            nn.init.normal_(self.frame_position_embeddings.weight, std=FRAME_POSITION_INIT_STD)
            towers.append((self.transformerClip, cfg.text_width, cfg.temporal_layers))
        for tower, width, layers in towers:
            proj_std = width ** -0.5 * (2 * max(layers, 1)) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
                nn.init.zeros_(block.attn.in_proj_bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.clip.text_projection, std=cfg.text_width ** -0.5)

    # ------------------------------------------------------------------ encoders
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) int64 -> text_embeds (B, D), not normalized."""
        return self.clip.encode_text(input_ids)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """frames (B, T, 3, S, S), frame_mask (B, T) -> frame_embeds (B, T, D), patch_indices (B, T, K).

        patch_indices are 0-based patch numbers (token p + 1, row-major), ascending per frame; they
        are None in training mode (perturbed selection) and when token selection is disabled.
        """
        cfg = self.cfg
        frames_per_video = cfg.max_frames
        if frames.shape[1] != frames_per_video or frame_mask.shape[1] != frames_per_video:
            raise ValueError(f"expected {frames_per_video} frames per video (max_frames), got frames "
                             f"{tuple(frames.shape)} and frame_mask {tuple(frame_mask.shape)}")
        tokens = self.clip.visual(frames.flatten(0, 1))           # (B*T, N, D)
        indices = None
        if cfg.token_selection:
            kept, indices = self.visual_token_selector(tokens)   # (B*T, M, D)
        else:
            kept = tokens[:, :1]                                  # CLS only, M = 1
        m = cfg.tokens_per_frame
        if cfg.sim_header == "meanP":
            return self._mean_pooled(kept.reshape(-1, frames_per_video, kept.shape[-1]), frame_mask), None
        v = kept.reshape(-1, frames_per_video * m, kept.shape[-1])  # (B, T*M, D), frame-major
        h = v + self.frame_position_embeddings.weight[: frames_per_video * m]
        token_mask = token_frame_mask(frame_mask, m, cfg.frame_mask_mode).to(v.dtype)  # (B, T*M)
        attn_mask = ((1.0 - token_mask) * TEMPORAL_MASK_VALUE)[:, None, None, :]    # (B, 1, 1, T*M)
        out = self.transformerClip(h, attn_mask) + v
        frame_embeds = out[:, ::m]                                # each frame's CLS slot (B, T, D)
        if indices is not None:
            indices = indices.reshape(-1, frames_per_video, cfg.top_k)
        return frame_embeds, indices

    def _mean_pooled(self, cls: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """meanP (CLIP4Clip): masked mean of the L2-normalised frame CLS embeddings, repeated per frame.

        cls (B, T, D) -> (B, T, D) with every frame holding the video embedding. Repeating keeps the
        frame_embeds I/O contract: the frame-weighted similarity of T identical frames is the cosine
        with that one embedding (the softmax weights are uniform over the valid frames), exactly
        CLIP4Clip's meanP score, so exporters and the runtime need no second code path.
        """
        mask = frame_mask.to(cls.dtype).unsqueeze(-1)                          # (B, T, 1)
        unit = cls / cls.norm(dim=-1, keepdim=True)
        pooled = (unit * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)     # (B, D)
        return pooled.unsqueeze(1).expand_as(cls)

    # ------------------------------------------------------------------ similarity and loss
    def similarity(self, text_embeds: torch.Tensor, frame_embeds: torch.Tensor,
                   frame_mask: torch.Tensor) -> torch.Tensor:
        """[Nt, Nv] logit-scaled similarity, following the model's frame mask mode."""
        mask = effective_frame_mask(frame_mask, self.cfg.tokens_per_frame, self.cfg.frame_mask_mode)
        return frame_weighted_similarity(text_embeds.float(), frame_embeds.float(), mask,
                                         self.clip.logit_scale.exp(), self.cfg.frame_softmax_factor)

    def forward(self, input_ids: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Training forward: symmetric cross-entropy over the batch's B x B similarity matrix."""
        text = self.encode_text(input_ids)
        video, _ = self.encode_video(frames, frame_mask)
        return contrastive_loss(self.similarity(text, video, frame_mask))


def contrastive_loss(sim: torch.Tensor) -> torch.Tensor:
    """(CE(sim, diag) + CE(sim^T, diag)) / 2 for a square text x video matrix of matching pairs."""
    target = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target)) / 2
