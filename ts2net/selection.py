"""Top-K token selection operators (docs/semantics.md, row 5).

* `hard_topk_ascending`: inference. One TopK (constant K, sorted), then the K indices put in
  ascending (raster) order by counting, for each index, how many of the others are smaller.
  It is exact, deterministic and made only of ops the TensorRT ONNX parser supports, so the
  same function is what PyTorch runs and what the exported graph contains.
* `perturbed_topk`: training, as the official `PerturbedTopK` (Berthet et al. 2020): the
  average of the one-hot top-K of `num_samples` noisy copies of the scores, with the
  estimator gradient E[one_hot(topk(x + sigma Z)) Z] / sigma. The official code contracts only
  the diagonal of that Jacobian; both are available (`gradient=`), the full one by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PERTURBED_GRADIENTS = ("full", "diagonal")


def hard_topk_ascending(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores (R, n) -> int64 indices (R, k) of the k largest scores, in ascending index order."""
    top = torch.topk(scores, k, dim=-1, largest=True, sorted=True).indices      # (R, k), by score
    # Position of each index in ascending order = number of the other indices below it.
    as_float = top.to(torch.float32)                                             # exact for n < 2**24
    rank = (as_float.unsqueeze(-1) > as_float.unsqueeze(-2)).to(torch.float32).sum(-1)  # (R, k)
    slots = torch.arange(k, dtype=torch.float32, device=scores.device)
    placement = (rank.unsqueeze(-1) == slots).to(torch.float32)                  # (R, k_from, k_to)
    ordered = (placement * as_float.unsqueeze(-1)).sum(1)                        # (R, k)
    return ordered.to(torch.int64)


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, num_samples: int, sigma: float,
                generator: torch.Generator | None, gradient: str):
        rows, n = scores.shape
        noise = torch.randn((rows, num_samples, n), generator=generator, device=scores.device,
                            dtype=scores.dtype)
        perturbed = scores.unsqueeze(1) + sigma * noise                                # (R, S, n)
        indices = torch.topk(perturbed, k, dim=-1, sorted=False).indices.sort(dim=-1).values  # (R, S, k)
        one_hot = F.one_hot(indices, n).to(scores.dtype)                              # (R, S, k, n)
        ctx.save_for_backward(one_hot, noise)
        ctx.num_samples, ctx.sigma, ctx.gradient = num_samples, sigma, gradient
        return one_hot.mean(dim=1)                                                    # (R, k, n)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        one_hot, noise = ctx.saved_tensors                      # (R, S, k, n), (R, S, n)
        scale = 1.0 / (ctx.num_samples * ctx.sigma)
        if ctx.gradient == "diagonal":
            # official code: only the d == e terms of E[one_hot[k, d] * Z_e]
            jacobian_diagonal = torch.einsum("rskn,rsn->rkn", one_hot, noise) * scale
            grad_scores = torch.einsum("rkn,rkn->rn", grad_output, jacobian_diagonal)
        else:
            # full estimator: grad_e = E[<grad_output, one_hot> * Z_e] / sigma
            per_sample = torch.einsum("rkn,rskn->rs", grad_output, one_hot)
            grad_scores = torch.einsum("rs,rsn->rn", per_sample, noise) * scale
        return grad_scores, None, None, None, None, None


def perturbed_topk(scores: torch.Tensor, k: int, num_samples: int = 500, sigma: float = 0.05,
                   generator: torch.Generator | None = None, gradient: str = "full") -> torch.Tensor:
    """scores (R, n) -> soft indicators (R, k, n): slot j is the frequency of each position being the
    j-th smallest index of the noisy top-k (so each slot's row sums to 1).

    gradient="full" is Berthet et al.'s estimator of the gradient of the expectation (what the
    finite-difference test checks); "diagonal" reproduces the official TS2-Net code, whose einsum
    keeps only the terms where the one-hot position and the noise coordinate coincide.
    """
    if gradient not in PERTURBED_GRADIENTS:
        raise ValueError(f"gradient={gradient!r}: expected one of {PERTURBED_GRADIENTS}")
    return _PerturbedTopK.apply(scores, k, num_samples, sigma, generator, gradient)
