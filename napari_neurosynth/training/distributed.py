"""Training at scale: several processes under ``torchrun`` (DistributedDataParallel) and mixed precision.

**Several GPUs.** ``torchrun --standalone --nproc_per_node N -m napari_neurosynth train ...``
starts N copies of ``neurosynth train``; each finds ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in its environment, and :func:`setup_distributed` joins them into one
process group (NCCL on CUDA, gloo on the CPU). ``--batch`` stays the *global*
batch: every process draws the whole global batch from the run's one seeded
generator and keeps its own contiguous share (:meth:`Distributed.share`), the
networks are wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`,
whose gradient all-reduce averages the shares' gradients, and so one step of N
processes is one step of a single process on the same global batch (up to the
order of floating-point sums). Drawing the whole batch everywhere costs a few
array copies per step, next to the network's work, and it is what keeps the
random stream, and so a resumed run, identical on every rank, whatever the
number of processes.

Only rank 0 logs, validates, writes checkpoints (atomically, via
:mod:`napari_neurosynth.atomic`) and exports the bundle; every rank loads the
same checkpoint on ``--resume``.

**Mixed precision.** ``--precision bf16|fp16|fp32`` (``--amp``: bf16 where the
GPU has it, fp16 otherwise) runs the forward passes and losses under
:func:`torch.autocast`; fp16 adds a :class:`torch.amp.GradScaler` so that small
gradients do not underflow. fp16 on the CPU is refused, and ``--amp`` on the CPU
falls back to fp32 (CPU autocast is slower than fp32 on most CPUs).

Examples
--------
>>> import numpy as np
>>> one = Distributed()
>>> one.world_size, one.is_main, one.local_batch(8)
(1, True, 8)
>>> two = Distributed(rank=1, world_size=2)
>>> two.share(np.arange(8))
array([4, 5, 6, 7])
>>> two.local_batch(6)
3
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import NeurosynthError

#: How long a process waits for the others at a collective (all-reduce, barrier) before giving
#: up: rank 0 validates and writes a checkpoint at each epoch's end while the others wait for
#: it at the next step's all-reduce, so the limit is generous (torch's NCCL default is 10 min).
TIMEOUT = datetime.timedelta(minutes=60)


def world_size_from_env() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``), 1 outside it.

    Examples
    --------
    >>> world_size_from_env() if "WORLD_SIZE" not in os.environ else 1
    1
    """
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise NeurosynthError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def check_global_batch(batch: int, world_size: int) -> int:
    """The per-process batch for a global ``batch`` over ``world_size`` processes.

    Raises
    ------
    NeurosynthError
        When ``batch`` does not divide evenly (shares of unequal size would weigh
        the processes' gradients unequally in DDP's average).

    Examples
    --------
    >>> check_global_batch(8, 2)
    4
    >>> check_global_batch(6, 4)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: --batch 6 is the global batch ... by the 4 processes; use --batch 4 or 8
    """
    if batch % world_size:
        lower = max(world_size, batch // world_size * world_size)
        upper = (batch // world_size + 1) * world_size
        alternatives = f"{lower} or {upper}" if lower != upper else f"{upper}"
        raise NeurosynthError(
            f"--batch {batch} is the global batch and must be divisible by the {world_size} processes; "
            f"use --batch {alternatives}"
        )
    return batch // world_size


@dataclass
class Distributed:
    """Where this process stands in a multi-process run (a single process by default).

    Parameters
    ----------
    rank, world_size, local_rank : int
        As ``torchrun`` sets them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
    device : torch.device
        This process's device (``cuda:LOCAL_RANK`` on GPUs).
    backend : str or None
        ``"nccl"`` or ``"gloo"`` once the process group is up; None for one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when several processes share the run (a process group is up)."""
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates, checkpoints and exports."""
        return self.rank == 0

    def local_batch(self, batch: int) -> int:
        """This process's share of a global ``batch`` (refused when it does not divide)."""
        return check_global_batch(batch, self.world_size)

    def share(self, batch: Any) -> Any:
        """This rank's contiguous share of a global batch (an array, a tensor, None, or a tuple of them)."""
        if isinstance(batch, tuple):
            return tuple(self.share(b) for b in batch)
        if batch is None or self.world_size == 1:
            return batch
        per = self.local_batch(len(batch))
        return batch[self.rank * per : (self.rank + 1) * per]

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's share of a batch concatenated in rank order: the global batch, on every rank.

        Used where a single process would look at the whole batch at once (CycleGAN's
        image pool draws per image in batch order); no gradient flows through it.
        """
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, 0)

    def wrap(self, net: nn.Module, log=None) -> nn.Module:
        """``net`` for the training step: itself for one process, else wrapped in DDP.

        Batch normalisation would normalise over each process's share instead of the
        global batch. On CUDA it becomes :class:`~torch.nn.SyncBatchNorm` (statistics
        over the global batch, as in one process); torch's SyncBatchNorm runs only on
        GPUs, so on the CPU the statistics stay per process and ``log`` says so.
        Instance normalisation (the default) is per sample and needs nothing.
        """
        if not self.enabled:
            return net
        from torch.nn.parallel import DistributedDataParallel

        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        if self.device.type == "cuda":
            # in place for every BatchNorm below the top module, with the same Parameter
            # objects, so the optimisers built before still hold them
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            return DistributedDataParallel(net, device_ids=[self.device.index])
        if has_bn and log is not None:
            log(
                f"note: {type(net).__name__} uses batch normalisation; on the CPU each of the {self.world_size} "
                "processes normalises over its own share of the batch (torch's SyncBatchNorm is GPU-only), "
                "so this run differs slightly from a single process"
            )
        return DistributedDataParallel(net)

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op for one process)."""
        if self.enabled:
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.device.index])
            else:
                torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group (once; a no-op for one process)."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.backend = None


def setup_distributed(device: str = "auto", batch: int | None = None) -> Distributed:
    """This process's place in the run, joining the process group when ``torchrun`` started several.

    Parameters
    ----------
    device : str
        The ``--device`` the user asked for: ``auto``, ``cpu`` or ``cuda`` (under
        ``torchrun`` each process takes ``cuda:LOCAL_RANK``).
    batch : int, optional
        The global batch, checked for divisibility by the number of processes
        *before* any process group is set up, so a bad value fails at once.

    Returns
    -------
    Distributed
        A single-process context outside ``torchrun`` (or with one process).

    Raises
    ------
    NeurosynthError
        An indivisible batch, ``cuda:N`` under ``torchrun``, MPS with several
        processes, fewer GPUs than processes on this node.

    Examples
    --------
    >>> setup_distributed("cpu", 8).enabled if "WORLD_SIZE" not in os.environ else False
    False
    """
    from ..inference import resolve_device

    world = world_size_from_env()
    if world == 1:
        return Distributed(device=resolve_device(device))
    if batch is not None:
        check_global_batch(int(batch), world)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if isinstance(device, str) and device.startswith("cuda:"):
        raise NeurosynthError(
            f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda "
            "(and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    dev = resolve_device(device)
    if dev.type == "mps":
        raise NeurosynthError("several processes on Apple MPS are not supported; use --device cpu under torchrun")
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise NeurosynthError(
                f"process LOCAL_RANK={local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc_per_node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not torch.distributed.is_available():
        raise NeurosynthError("this torch build has no torch.distributed; train with a single process")
    torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


# --------------------------------------------------------------------------- mixed precision


def training_precision(precision: str | None, device: torch.device) -> str:
    """The precision a run trains in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` (``--amp``) is bf16 on CUDA GPUs that have it, fp16 on older ones and
    on MPS, and fp32 on the CPU.

    Raises
    ------
    NeurosynthError
        fp16 on the CPU: CPU autocast in float16 is slow and its gradients need
        scaling that buys nothing there; bf16 or fp32 are the CPU's choices.

    Examples
    --------
    >>> training_precision("auto", torch.device("cpu")), training_precision("bf16", torch.device("cpu"))
    ('fp32', 'bf16')
    >>> training_precision("fp16", torch.device("cpu"))
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: --precision fp16 needs a GPU (--device cuda); ...
    """
    from ..inference import resolve_precision

    name = resolve_precision(precision, device)
    if name == "fp16" and device.type == "cpu":
        raise NeurosynthError("--precision fp16 needs a GPU (--device cuda); on the CPU train in bf16 or fp32")
    return name


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Forward passes and losses in ``precision`` (nothing changes for fp32).

    Examples
    --------
    >>> with autocast("bf16", torch.device("cpu")):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, on for fp16 only (bf16 has fp32's exponent range and needs none).

    Disabled, its ``scale`` returns the loss and its ``step`` is the optimiser's, so
    fp32 and bf16 steps are unchanged.

    Examples
    --------
    >>> grad_scaler("fp32", torch.device("cpu")).is_enabled()
    False
    """
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
