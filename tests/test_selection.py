"""Perturbed top-K (training) against hard top-K (inference) and its estimator gradient."""
from __future__ import annotations

import math

import torch

from ts2net.selection import hard_topk_ascending, perturbed_topk


def test_perturbed_topk_tends_to_hard_topk_as_sigma_vanishes():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 49, generator=gen)
    hard = hard_topk_ascending(scores, 3)
    soft = perturbed_topk(scores, 3, num_samples=50, sigma=1e-6, generator=gen)
    assert torch.equal(soft, torch.nn.functional.one_hot(hard, 49).float())
    wide = perturbed_topk(scores, 3, num_samples=50, sigma=5.0, generator=gen)
    assert not torch.equal(wide, soft)          # the noise does matter at large sigma
    assert torch.allclose(wide.sum(-1), torch.ones(64, 3))


def test_perturbed_topk_slots_are_ascending_positions():
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    out = perturbed_topk(scores, 2, num_samples=10, sigma=1e-6)
    assert out[0].argmax(-1).tolist() == [1, 3]


def _expected_selection_probability(x: torch.Tensor, sigma: float) -> float:
    """P(position 0 is the top-1 of x + sigma Z) for two positions: Phi((x0 - x1) / (sigma sqrt 2))."""
    return 0.5 * (1 + math.erf(float(x[0] - x[1]) / (sigma * math.sqrt(2)) / math.sqrt(2)))


def test_estimator_gradient_matches_finite_differences_of_the_expectation():
    sigma, samples = 0.05, 200_000
    x = torch.tensor([[0.03, 0.0]], requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    out = perturbed_topk(x, 1, num_samples=samples, sigma=sigma, generator=gen)   # (1, 1, 2)
    out[0, 0, 0].backward()                                                       # d P(select 0) / dx
    grad = x.grad[0]
    # finite differences of the exact expectation
    h = 1e-4
    def f(delta):
        return _expected_selection_probability(x.detach()[0] + delta, sigma)
    fd = torch.tensor([(f(torch.tensor([h, 0.0])) - f(torch.tensor([-h, 0.0]))) / (2 * h),
                       (f(torch.tensor([0.0, h])) - f(torch.tensor([0.0, -h]))) / (2 * h)])
    # the estimator's standard error: std(1[sel] * z) / sigma / sqrt(samples) <= 1 / sigma / sqrt(samples)
    tolerance = 4 / sigma / math.sqrt(samples)
    assert torch.allclose(grad, fd, atol=tolerance), (grad, fd, tolerance)
    # and it is the Monte-Carlo finite difference of the perturbed operator itself (common noise)
    step = 0.01
    up = perturbed_topk(x.detach() + torch.tensor([[step, 0.0]]), 1, samples, sigma, torch.Generator().manual_seed(1))
    down = perturbed_topk(x.detach() - torch.tensor([[step, 0.0]]), 1, samples, sigma, torch.Generator().manual_seed(1))
    mc_fd = (up[0, 0, 0] - down[0, 0, 0]) / (2 * step)
    assert abs(mc_fd - grad[0]) < 0.1 * abs(fd[0]), (mc_fd, grad[0])


def test_estimator_gradient_for_top3_of_many_positions():
    sigma, samples = 0.05, 100_000
    gen = torch.Generator().manual_seed(3)
    x = (torch.arange(8.0) * 0.02).reshape(1, 8).requires_grad_()
    weights = torch.randn(1, 3, 8, generator=gen)
    (perturbed_topk(x, 3, samples, sigma, generator=gen) * weights).sum().backward()
    grad = x.grad.clone()
    # central differences of the Monte-Carlo expectation with common random numbers
    fd = torch.zeros(8)
    step = 0.01
    for i in range(8):
        e = torch.zeros(1, 8)
        e[0, i] = step
        up = (perturbed_topk(x.detach() + e, 3, samples, sigma, torch.Generator().manual_seed(9)) * weights).sum()
        down = (perturbed_topk(x.detach() - e, 3, samples, sigma, torch.Generator().manual_seed(9)) * weights).sum()
        fd[i] = (up - down) / (2 * step)
    scale = fd.abs().max()
    assert torch.allclose(grad[0], fd, atol=0.15 * scale), (grad, fd)
    assert torch.allclose(grad.sum(), torch.tensor(0.0), atol=0.1 * scale)  # shift invariance of top-k


def test_diagonal_gradient_reproduces_the_official_einsum():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 12, generator=gen).requires_grad_()
    g = torch.randn(5, 3, 12, generator=gen)
    state = gen.get_state()
    (perturbed_topk(x, 3, 64, 0.05, generator=gen, gradient="diagonal") * g).sum().backward()
    # the official formula, recomputed from the same noise
    gen.set_state(state)
    noise = torch.randn(5, 64, 12, generator=gen)
    idx = torch.topk(x.detach().unsqueeze(1) + 0.05 * noise, 3, dim=-1).indices.sort(-1).values
    one_hot = torch.nn.functional.one_hot(idx, 12).float()
    expected_gradient = torch.einsum("bnkd,bnd->bkd", one_hot, noise) / 64 / 0.05
    assert torch.allclose(x.grad, torch.einsum("bkd,bkd->bd", g, expected_gradient), atol=1e-5)
