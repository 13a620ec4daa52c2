"""Data parallelism for SFT and alignment, for models that need more than one GPU's throughput.

A training job started by ``accelerate launch --num_processes N -m blade.cli sft|align …`` (the
rules do this when ``run.processes`` > 1) runs as N processes. Each process holds the whole model;
every step's rows are split between them, and the gradient is summed across them before the
optimiser steps, so the N copies stay identical and the result is one process's up to the order of
float additions (tested with 2 CPU processes over gloo: ``tests/test_distributed.py``).

- SFT: each process computes the token NLL of its share of the batch, divided by the whole batch's
  token weight, so the summed gradient is the one-process gradient exactly.
- Alignment: every process draws the same lists (same seeds), and each computes the constrained
  log-probs — the forward and backward passes, the bulk of a step — of its share of them. The
  shares are gathered, each process's own share keeping its autograd graph, and every process
  evaluates the objective on the whole batch; the gradients of the shares then sum to the
  one-process gradient whatever the objective (batch-normalised advantages, group weights,
  estimator state all see the whole batch).
- Valid selection runs in every process on the same weights (it decides whether to stop, so every
  process must know it); only the main process writes files and MLflow runs.

SFT dropout is not split exactly (each process draws its own masks), nor is sampling split: the
sampler's lists are drawn in every process.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np


def launched() -> bool:
    """True inside a multi-process launch (accelerate launch / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Group:
    """This process's place among the launched ones; a 1-process group does no communication."""

    def __init__(self) -> None:
        self.rank, self.world, self.device = 0, 1, None
        if launched():
            import torch
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU, NCCL on GPUs
            self.rank, self.world, self.device = state.process_index, state.num_processes, state.device
            if torch.cuda.is_available():
                torch.cuda.set_device(state.local_process_index)  # "cuda" = this process's GPU

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> np.ndarray:
        """Indices of this process's share of n rows (contiguous, sizes differ by at most one)."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum_gradients(self, params) -> None:
        """Sum each parameter's gradient over the processes (one all-reduce per dtype). A parameter
        no process has a gradient for keeps ``grad = None``, as in one process (AdamW skips it)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        device = params[0].device
        has = torch.tensor([float(p.grad is not None) for p in params], device=device)
        dist.all_reduce(has)
        for dtype in sorted({p.dtype for p in params}, key=str):
            group = [p for p in params if p.dtype == dtype]
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            dist.all_reduce(flat)
            at = 0
            for p in group:
                p.grad = flat[at:at + p.numel()].view_as(p).clone()
                at += p.numel()
        for p, flag in zip(params, has.tolist()):
            if flag == 0:
                p.grad = None

    def agree(self, value: float) -> float:
        """The main process's value in every process: decisions (best step, early stop) stay
        common even where kernels are not bit-reproducible across devices."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def check_same(self, what: str, values) -> None:
        """Raise if ``values`` (e.g. the step's sampled items) differ between processes: every
        process must have drawn the same lists for the gathered batch to be one batch."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        low = torch.as_tensor(np.asarray(values, dtype=np.int64), device=self.device)
        high = low.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            from blade.errors import TrainingError

            raise TrainingError(f"data-parallel run: the processes drew different {what} (non-deterministic kernels on "
                                "this device?); run with run.processes: 1")

    def sum(self, value):
        """A tensor summed over the processes (itself in a 1-process group)."""
        if self.world > 1:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
        return value

    def gather_rows(self, local, n: int):
        """The (n, T) tensor whose rows :meth:`share` ``(n)`` are ``local`` (L, T_local) — with its
        autograd graph — and whose other rows are the other processes' shares (no graph), padded
        with zeros to the longest T."""
        if self.world == 1:
            return local
        import torch
        import torch.distributed as dist
        import torch.nn.functional as F

        width = torch.tensor([local.shape[1]], device=local.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        T = int(width.item())
        sizes = [len(s) for s in np.array_split(np.arange(n), self.world)]
        M = max(sizes)  # collectives move equal shapes: pad rows to the largest share, then trim
        pad = F.pad(local, (0, T - local.shape[1], 0, M - local.shape[0]))
        parts = [torch.empty((M, T), dtype=local.dtype, device=local.device) for _ in sizes]
        dist.all_gather(parts, pad.detach().contiguous())
        parts = [part[:m] for part, m in zip(parts, sizes)]
        parts[self.rank] = pad[:sizes[self.rank]]
        return torch.cat(parts)


@cache
def group() -> Group:
    """The process group of this job (initialised once)."""
    return Group()
