"""Process groups, rank queries, seeding and global-batch BatchNorm for (multi-process) training.

Launch with ``torchrun``: it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``, and :func:`init_distributed` joins the group (NCCL on GPU, gloo on CPU). Without
those variables training runs in one process and no process group is created; every helper here
then answers for a world of one.
"""

from __future__ import annotations

import inspect
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from groupvit.errors import ConfigError, InputError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``.

    ``backend`` is ``"nccl"``, ``"gloo"`` or ``None`` (single process, no process group).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and logs."""
        return self.rank == 0


def env_int(name: str, default: int) -> int:
    """Integer environment variable ``name`` (as torchrun sets them), ``default`` when unset or empty."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when a GPU is visible, else ``cpu``; ``"cpu"`` / ``"cuda"`` as asked."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no GPU is visible; use train.device=cpu or auto")
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"train.device must be auto, cpu or cuda, got {device!r}")


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group described by the torchrun environment variables.

    A group created beforehand (e.g. by a test with ``init_method="file://..."``) is reused. NCCL is
    used when training on GPU, gloo on CPU.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = env_int("LOCAL_RANK", rank)
        backend = str(dist.get_backend())
    else:
        rank, world, local_rank = env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0)
        backend = None
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world > 1 and backend is None:
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=target, backend=backend)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """Rank of this process; 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    """Number of processes; 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world() > 1:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks, as a new tensor (a copy in a single process). No gradient."""
    out = tensor.detach().clone()
    if world() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world()
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks, as a new tensor (a copy in a single process). No gradient."""
    out = tensor.detach().clone()
    if world() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order: ``[obj_0, ..., obj_{W-1}]``."""
    if world() == 1:
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global generator and torch (CPU and every GPU).

    Training seeds each rank with ``seed + rank`` (official ``use_rank_shift``), so DropPath and
    Gumbel noise differ between ranks while runs stay reproducible.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Differentiable collectives. Convention: every rank back-propagates its own loss L_r, and a
# collective's backward hands each rank the gradient of the sum over ranks, sum_r L_r; DDP's
# averaging of parameter gradients then yields the gradient of the mean loss.


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Sum over ranks of the gradients for the whole gathered tensor, then this rank's rows.
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = torch.empty((grad.shape[0] // world(), *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad)
            return out
        total = grad.clone()
        dist.all_reduce(total)  # gloo has no reduce-scatter
        return total.chunk(world(), dim=0)[rank()].contiguous()


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x [B, ...]`` (same shape on all) concatenated in rank order: ``[W*B, ...]``.

    Backward: rank ``r`` receives, for its ``x``, the sum over ranks of the gradients flowing into rows
    ``r*B .. (r+1)*B - 1`` of the result (a reduce-scatter). The identity in a single process.
    """
    return x if world() == 1 else _AllGather.apply(x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks; backward all-reduces the incoming gradient. The identity in a single process."""
    return x if world() == 1 else _AllReduceSum.apply(x)


# ----------------------------------------------------------------------------------------------
# BatchNorm over the global batch (official: SyncBatchNorm in both projection heads)


class AllReduceBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics cover the batch of every rank, on any backend.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so CPU (gloo) runs use this layer instead; on
    GPU (NCCL) the trainer uses ``SyncBatchNorm`` itself. Forward in training, with ``x [N_r, C]``
    on rank ``r`` and ``N = sum_r N_r``:

    * ``mean = all_reduce(sum_n x) / N``, then ``var = all_reduce(sum_n (x - mean)^2) / N`` (biased,
      used to normalise; two passes for accuracy);
    * running statistics use the unbiased ``var * N / (N - 1)``, as ``SyncBatchNorm``.

    The sums go through :func:`all_reduce_with_grad`, whose backward all-reduces the incoming
    gradients: each rank's input receives the gradient of the sum of all ranks' losses
    through the shared statistics, exactly what ``SyncBatchNorm``'s backward computes. Evaluation
    and single-process training are plain ``BatchNorm1d``. Parameter and buffer names are those of
    ``BatchNorm1d``, so state dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world() == 1:
            return super().forward(x)
        if x.dim() != 2:
            raise InputError(f"AllReduceBatchNorm1d expects [N, C] input, got shape {tuple(x.shape)}")
        count = all_reduce_sum(torch.tensor(float(x.shape[0]), device=x.device, dtype=torch.float64)).item()
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = all_reduce_with_grad(xf.sum(dim=0)) / count
        centred = xf - mean
        var = all_reduce_with_grad((centred * centred).sum(dim=0)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / max(count - 1.0, 1.0))
                self.running_mean.mul_(1.0 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.detach().to(self.running_var.dtype), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm1d) -> AllReduceBatchNorm1d:
        """A copy of ``bn`` (same parameters, buffers, eps, momentum) with global-batch statistics."""
        new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        if bn.running_mean is not None:
            new.to(bn.running_mean.device)
        return new


def synchronize_head_batchnorm(model: nn.Module, env: DistEnv) -> None:
    """Make the BatchNorm of both projection heads use global-batch statistics when ``world_size > 1``.

    Only the heads carry BatchNorm (official: ``SyncBatchNorm`` in ``img_projector`` and
    ``text_projector``). NCCL gets ``torch.nn.SyncBatchNorm``; other backends (gloo on CPU) get
    :class:`AllReduceBatchNorm1d`. A single process keeps plain ``BatchNorm1d``. Modifies ``model``
    in place.
    """
    if env.world_size == 1:
        return
    for head in (model.image_projector, model.text_projector):
        if env.backend == "nccl":
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(head)
        else:
            head.bn = AllReduceBatchNorm1d.from_batchnorm(head.bn)


def wrap_ddp(module: nn.Module, env: DistEnv) -> DistributedDataParallel:
    """DDP without buffer broadcasting on every forward (official ``broadcast_buffers=False``).

    The heads' BatchNorm statistics are global-batch ones, hence identical on all ranks already.
    Recent torch spells the option ``forward_sync_buffers``; older versions ``broadcast_buffers``.
    """
    sync_option = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel.__init__).parameters else "broadcast_buffers"
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **{sync_option: False})
