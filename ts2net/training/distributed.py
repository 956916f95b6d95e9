"""gloo DDP for training: process group set-up and the all-gathers that give every process the full batch."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the gloo process group described by torchrun's env vars (RANK, WORLD_SIZE, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this process's slice of the gradient SUMMED over processes.

    Every process computes the same loss L from the gathered tensors, and DDP then AVERAGES the
    parameter gradients over the W processes. Process r's embeddings e_r enter every process's
    copy of L, but autograd on process q only reaches the parameters through q's own slice.
    Summing the W gradients of the gathered tensor and keeping slice r gives process r
    sum_q dL_q/de_r = W * dL/de_r, and DDP's average divides by W again: exactly the gradient
    one process holding the whole batch would get. (The official code keeps the local slice without
    summing, so its gradients are 1/W of that: Adam's update barely notices, but gradient clipping
    thresholds and the logged norms then depend on the number of GPUs.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (same shape on every process) over processes, along dim 0, differentiably."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def shutdown() -> None:
    """Leave the process group, if one was joined (torchrun runs); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
