"""Cohort synthesis and evaluation, in one process or on a Dask distributed cluster.

A cohort is many subjects run through one model (:func:`run_synthesis`) and then
compared with their acquired images (:func:`run_evaluation`). Dask distributed
spreads the subjects: ``workers=N`` starts a ``LocalCluster`` of N single-threaded
worker processes (on a GPU node, one GPU per worker: dask-cuda's ``LocalCUDACluster``
when it is installed, else our own ``CUDA_VISIBLE_DEVICES`` per worker),
``scheduler="tcp://host:8786"`` uses a running cluster, and neither runs the
subjects here, one after the other. There is no scheduler of our own: a worker
killed mid-subject has its subject rescheduled by Dask (the scheduler's
``allowed-failures``, 3 by default), not by this module.

**What makes a rerun cheap.** Each output ``OUT/<subject>_<output>_synth.nii.gz``
is written atomically (:mod:`napari_neurosynth.atomic`) and then gets a sidecar
``OUT/<subject>_<output>_synth.json`` in the BIDS-derivatives style
(``GeneratedBy``, ``Sources``) that records the model's weights sha256 and the
output file's own sha256. The planner (:func:`plan_synthesis`) skips a subject
whose output exists with a record of the same model weights and whose bytes still
match the record, and computes again one that an older version of the model (same
name, other weights) made; an output made by another model, changed since, or
without a record is refused unless ``force``. A sidecar rather than a NIfTI header extension
because it is readable by every tool (``jq``, BIDS validators), works for any
output format, and the output stays exactly what :func:`~napari_neurosynth.io.write_volume`
writes. The sidecar is written after the image: a kill between the two renames
leaves an image without its record (none, or the previous output's), which a rerun
refuses rather than trusts.

**Bit-identical, however it is spread.** Torch's CPU kernels sum in an order that
depends on the number of intra-op threads (outputs differ at ~1e-7), so every
subject is computed with ``threads`` torch threads (default 1) in this process
and on every worker alike: the parallelism of a cohort is across subjects.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> out = Path(tempfile.mkdtemp())
>>> plan = plan_synthesis({"s1": {"t1": out / "s1_t1.nii.gz"}}, ["t1"], "t2", out, "ab" * 32)
>>> [t.subject for t in plan.tasks], plan.tasks[0].output.name, plan.skipped, plan.failures
(['s1'], 's1_t2_synth.nii.gz', [], [])
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import LocalCluster, WorkerPlugin

from .atomic import atomic_path, atomic_write_text, check_output_path, is_partial
from .errors import NeurosynthError

if TYPE_CHECKING:
    from distributed import Client

    from .bundle import Model

__all__ = [
    "EVAL_COLUMNS",
    "CohortReport",
    "EvalTask",
    "ModelPlugin",
    "Plan",
    "SynthesisOptions",
    "SynthTask",
    "cohort_client",
    "evaluate_subject",
    "file_sha256",
    "output_path",
    "plan_evaluation",
    "plan_synthesis",
    "plot_cohort",
    "read_record",
    "record_path",
    "run_evaluation",
    "run_synthesis",
    "summarize_cohort",
    "synthesize_subject",
    "worker_gpus",
    "write_evaluation",
]

log = logging.getLogger(__name__)

#: Suffix of the outputs (``_synth`` keeps them apart from acquired images).
OUTPUT_SUFFIX = "_synth.nii.gz"


# --------------------------------------------------------------------------- records


def output_path(out_dir: str | os.PathLike[str], subject: str, modality: str) -> Path:
    """Where a subject's synthesized ``modality`` goes.

    Examples
    --------
    >>> output_path("out", "sub-01", "t2")
    PosixPath('out/sub-01_t2_synth.nii.gz')
    """
    return Path(out_dir) / f"{subject}_{modality}{OUTPUT_SUFFIX}"


def record_path(output: str | os.PathLike[str]) -> Path:
    """The provenance sidecar of an output: same name, ``.json`` instead of ``.nii.gz``.

    Examples
    --------
    >>> record_path("out/sub-01_t2_synth.nii.gz")
    PosixPath('out/sub-01_t2_synth.json')
    """
    p = Path(output)
    name = p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(name + ".json")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_record(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of ``output`` as a dict, or None when it is missing or unreadable."""
    try:
        record = json.loads(record_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _existing_output_verdict(output: Path, model_sha: str, model_name: str | None = None) -> tuple[str, str]:
    """What to do with an existing ``output``: ``("skip", "")``, ``("replace", why)`` or ``("refuse", why)``.

    Skip this model's untouched output; replace (recompute) an untouched output that a
    model of the same name made with other weights (a retrained model: the output is
    stale, and it is ours); refuse anything else (another model's, changed by hand,
    no record), which only ``force`` replaces.
    """
    record = read_record(output)
    if record is None:
        return "refuse", f"{output.name} exists without a provenance record ({record_path(output).name})"
    model = record.get("model") or {}
    recorded, name = str(model.get("sha256", "")), str(model.get("name", ""))
    if record.get("output_sha256") != file_sha256(output):
        return "refuse", f"{output.name} was changed after it was written (its sha256 differs from its record)"
    if recorded == model_sha:
        return "skip", ""
    why = f"{output.name} was made by model {name or '?'} weights sha256 {recorded[:12] or '?'}, not {model_sha[:12]}"
    if model_name is None or name == model_name:
        return "replace", why
    return "refuse", f"{why} (another model, {model_name!r} now)"


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class SynthTask:
    """One subject to synthesize: its inputs in the model's order and its output file."""

    subject: str
    inputs: tuple[Path, ...]
    output: Path


@dataclass
class Plan:
    """What a cohort run will do: ``tasks`` to compute, ``skipped`` subjects, ``failures`` with reasons.

    ``replaced`` names the subjects among ``tasks`` whose existing output an older
    version of the model (same name, other weights) made: they are computed again.
    """

    tasks: list[SynthTask] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


def plan_synthesis(
    subjects: Mapping[str, Mapping[str, Path]],
    modalities: Sequence[str],
    output: str,
    out_dir: str | os.PathLike[str],
    model_sha: str,
    *,
    force: bool = False,
    model_name: str | None = None,
) -> Plan:
    """Decide per subject: compute, skip (this model's output is there) or refuse.

    Parameters
    ----------
    subjects : mapping
        ``{subject: {modality: path}}`` (``cli.synthesize.find_subjects``).
    modalities : sequence of str
        The model's inputs, in order.
    output : str
        The model's output modality (names the files).
    out_dir : path-like
        The output folder.
    model_sha : str
        The sha256 of the model's weights (the card's ``weights.sha256``).
    force : bool
        Replace outputs made by another model, changed since, or without a record.
        This model's own untouched outputs are skipped even so (they would come out
        the same); delete them to recompute.
    model_name : str, optional
        The model's name (``Model.name``). An untouched output whose record names
        this model with *other* weights (it was retrained) is stale and computed
        again without ``force`` (listed in ``Plan.replaced``); one whose record names
        another model is refused unless ``force``. None: any other weights are stale.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> _ = (out / "s1_t2_synth.nii.gz").write_bytes(b"old")
    >>> plan = plan_synthesis({"s1": {"t1": out / "a.nii.gz"}, "s2": {}}, ["t1"], "t2", out, "ab" * 32)
    >>> plan.tasks, plan.failures[0][0], plan.failures[1]
    ([], 's1', ('s2', 'no t1 image found'))
    >>> plan.failures[0][1]
    's1_t2_synth.nii.gz exists without a provenance record (s1_t2_synth.json); pass --force to replace it'

    A record of this model's name with other weights (it was retrained): computed again.

    >>> _ = atomic_write_text(record_path(out / "s1_t2_synth.nii.gz"), json.dumps(
    ...     {"model": {"name": "m", "sha256": "cd" * 32}, "output_sha256": file_sha256(out / "s1_t2_synth.nii.gz")}))
    >>> plan = plan_synthesis({"s1": {"t1": out / "a.nii.gz"}}, ["t1"], "t2", out, "ab" * 32, model_name="m")
    >>> [t.subject for t in plan.tasks], plan.replaced
    (['s1'], ['s1'])
    >>> plan = plan_synthesis({"s1": {"t1": out / "a.nii.gz"}}, ["t1"], "t2", out, "ab" * 32, model_name="other")
    >>> print(plan.failures[0][1])  # doctest: +NORMALIZE_WHITESPACE
    s1_t2_synth.nii.gz was made by model m weights sha256 cdcdcdcdcdcd, not abababababab
    (another model, 'other' now); pass --force to replace it
    >>> [t.subject for t in plan_synthesis({"s1": {"t1": out / "a.nii.gz"}}, ["t1"], "t2", out, "ab" * 32,
    ...                                     force=True).tasks]
    ['s1']
    """
    plan = Plan()
    for name, files in subjects.items():
        missing = [m for m in modalities if m not in files]
        if missing:
            plan.failures.append((name, f"no {', '.join(missing)} image found"))
            continue
        target = output_path(out_dir, name, output)
        inputs = tuple(Path(files[m]) for m in modalities)
        try:
            check_output_path(target, force=True, inputs=inputs)  # never write over an input
        except NeurosynthError as exc:
            plan.failures.append((name, str(exc)))
            continue
        if target.exists():
            verdict, why = _existing_output_verdict(target, model_sha, model_name)
            if verdict == "skip":
                plan.skipped.append(name)
                continue
            if verdict == "refuse" and not force:
                plan.failures.append((name, f"{why}; pass --force to replace it"))
                continue
            if verdict == "replace":
                plan.replaced.append(name)
        plan.tasks.append(SynthTask(name, inputs, target))
    return plan


# --------------------------------------------------------------------------- one subject


@dataclass(frozen=True)
class SynthesisOptions:
    """The engine's options for every subject of a cohort (see :func:`~napari_neurosynth.inference.synthesize`)."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | str = "auto"
    resample: bool = False
    crop: bool = True
    #: torch intra-op threads per subject (the same here and on every worker: bit-identical outputs).
    threads: int = 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(exc, NeurosynthError) else f"{type(exc).__name__}: {msg}"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synthesize_subject(task: SynthTask, model: Model, options: SynthesisOptions, device: str | None = None) -> dict:
    """Synthesize one subject and write its output and provenance record atomically.

    Returns a result dict: ``subject``, ``status`` (``"computed"`` or ``"failed"``),
    ``reason`` (one line, for failures), ``seconds``, ``device`` and ``worker``
    (process id). Any exception becomes a failure, so that one bad subject never
    stops the cohort; only the process dying (a killed worker) escapes, and Dask
    retries that.
    """
    from . import __version__
    from .inference import CPU_MAX_BATCH, resolve_device, synthesize_volume
    from .io import read_volume, write_volume

    t0 = time.perf_counter()
    result: dict[str, Any] = {"subject": task.subject, "worker": os.getpid(), "device": device or options.device}
    try:
        volumes = [read_volume(p) for p in task.inputs]
        batch_size = options.batch_size
        if batch_size in (None, "auto") and resolve_device(device or options.device).type == "cpu":
            # "auto" follows the free memory, and oneDNN's bits differ between batch sizes
            # (~1e-6): a fixed size keeps a cohort's outputs identical on any worker, any load.
            batch_size = CPU_MAX_BATCH
        with _torch_threads(options.threads):
            synth = synthesize_volume(
                model,
                volumes,
                device=device or options.device,
                precision=options.precision,
                batch_size=batch_size,
                resample=options.resample,
                crop=options.crop,
            )
        with atomic_path(task.output) as tmp:
            write_volume(synth, tmp)
        info = synth.metadata.get("inference", {})
        record = {
            "GeneratedBy": [{"Name": "napari-neurosynth", "Version": __version__}],
            "Sources": [str(p) for p in task.inputs],
            "subject": task.subject,
            "modality": model.card["output"],
            "model": {"name": model.name, "path": str(model.path), "sha256": model.card["weights"]["sha256"]},
            "output_sha256": file_sha256(task.output),
            "inference": info,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(record_path(task.output), json.dumps(record, indent=2, default=str) + "\n")
        result.update(status="computed", device=str(info.get("device", result["device"])))
    except Exception as exc:  # one bad subject must not stop the cohort
        result.update(status="failed", reason=_one_line(exc))
    result["seconds"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- Dask


def worker_gpus(workers: int, visible: str | None, count: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` of each local worker: one GPU each, at most one worker per GPU.

    ``visible`` is this process's own ``CUDA_VISIBLE_DEVICES`` (the GPUs the user
    allows; indices or UUIDs), ``count`` the number of GPUs torch sees.

    Examples
    --------
    >>> worker_gpus(4, None, 2)          # two GPUs: two workers, not four
    ['0', '1']
    >>> worker_gpus(2, "3,GPU-5f2c", 2)  # the user's own selection, in its order
    ['3', 'GPU-5f2c']
    >>> worker_gpus(2, None, 0)
    []
    """
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(count)]
    return devices[: min(max(0, workers), len(devices))]


def _worker_device(requested: str) -> tuple[str, str]:
    """The device a worker runs on and how it says so: ``("cuda:0", "cuda:0 (NVIDIA H200, CUDA_VISIBLE_DEVICES=1)")``.

    ``auto``/``cuda`` is the worker's first visible GPU: the one GPU that our local
    clusters and dask-cuda's (which lists the worker's own GPU first) give it, or
    the one ``CUDA_VISIBLE_DEVICES=i dask worker ...`` gives it on a cluster.
    """
    import torch

    from .inference import resolve_device

    device = resolve_device(requested)
    if device.type != "cuda":
        return str(device), str(device)
    index = 0 if device.index is None else device.index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
    return f"cuda:{index}", f"cuda:{index} ({torch.cuda.get_device_name(index)}{where})"


class ModelPlugin(WorkerPlugin):
    """A Dask worker plugin that loads the model once per worker (not once per subject).

    Registered with ``client.register_plugin(plugin)``; the scheduler also sets it
    up on workers that join later, such as one the nanny restarts after a kill.
    The weights' sha256 is checked against the client's, so every worker runs the
    same model even when the bundle folder is shared over a network file system.
    """

    #: Registering it again (a second cohort on the same cluster) keeps the loaded model.
    idempotent = True

    def __init__(self, bundle: str, sha256: str, device: str = "auto"):
        self.bundle, self.sha256, self.requested = bundle, sha256, device
        self.name = f"neurosynth-model-{sha256[:16]}-{device}"
        self.model: Model | None = None
        self.device = self.device_label = device
        self.loads = 0

    def setup(self, worker: Any) -> None:
        from .bundle import load_model

        model = load_model(self.bundle)
        if model.card["weights"]["sha256"] != self.sha256:
            raise NeurosynthError(f"worker {worker.address}: bundle {self.bundle} is not the model the client loaded")
        self.device, self.device_label = _worker_device(self.requested)
        self.model = model
        self.loads += 1
        log.info("worker %s (pid %d): model %s on %s", worker.address, os.getpid(), model.name, self.device_label)

    def teardown(self, worker: Any) -> None:
        self.model = None


def _plugin(name: str) -> ModelPlugin:
    from distributed import get_worker

    plugin = get_worker().plugins.get(name)
    if not isinstance(plugin, ModelPlugin) or plugin.model is None:
        raise NeurosynthError(f"worker has no model plugin {name!r}; was the cohort's client restarted?")
    return plugin


def _synthesize_on_worker(task: SynthTask, plugin_name: str, options: SynthesisOptions) -> dict:
    plugin = _plugin(plugin_name)
    assert plugin.model is not None
    return synthesize_subject(task, plugin.model, options, device=plugin.device)


def _worker_report(plugin_name: str, dask_worker: Any = None) -> dict:
    """Run on each worker by ``client.run``: which device it uses and how often it loaded the model."""
    plugin = dask_worker.plugins.get(plugin_name) if dask_worker is not None else None
    if not isinstance(plugin, ModelPlugin) or plugin.model is None:  # its setup failed on this worker
        return {"pid": os.getpid(), "device": "no model (the plugin's setup failed; see the worker's log)", "loads": 0}
    return {"pid": os.getpid(), "device": plugin.device_label, "loads": plugin.loads}


def _local_cluster(workers: int, threads: int, gpus: Sequence[str]) -> Any:
    """A local cluster of ``workers`` processes, or one worker per GPU in ``gpus``.

    For GPUs, dask-cuda's ``LocalCUDACluster`` when it is installed (it also pins
    each worker's CPU affinity and memory to its GPU's NUMA node), else
    :class:`_GPUCluster`, which gives each worker its own ``CUDA_VISIBLE_DEVICES``.
    """
    common = {"threads_per_worker": threads, "dashboard_address": ":0", "silence_logs": _dask_log_level()}
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            return _GPUCluster(gpus, **common)
        return LocalCUDACluster(n_workers=len(gpus), CUDA_VISIBLE_DEVICES=",".join(gpus), **common)
    return LocalCluster(n_workers=workers, processes=True, **common)


class _GPUCluster(LocalCluster):
    """A ``LocalCluster`` whose worker *i* sees only ``gpus[i]`` (its ``CUDA_VISIBLE_DEVICES``).

    What dask-cuda's ``LocalCUDACluster`` does, through the same documented hook
    (``SpecCluster.new_worker_spec``), for a node without dask-cuda. The nanny keeps
    the environment, so a worker it restarts after a kill gets its GPU again.
    """

    def __init__(self, gpus: Sequence[str], **kwargs: Any):
        self.gpus = list(gpus)
        # system memory shared between the workers, as LocalCluster(n_workers=N) does
        kwargs.setdefault("memory_limit", 1 / max(1, len(self.gpus)))
        super().__init__(n_workers=0, processes=True, **kwargs)
        self.scale(len(self.gpus))

    def new_worker_spec(self) -> dict[int, dict]:
        name = min(set(range(len(self.gpus))) - set(self.worker_spec))
        spec = copy.deepcopy(self.new_spec)
        spec["options"]["env"] = {**spec["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": self.gpus[name]}
        return {name: spec}


def _gpus_for(device: str, workers: int) -> list[str]:
    """The GPUs a local cluster gives its workers: all visible ones for ``auto``/``cuda`` on a CUDA machine."""
    if device not in ("auto", "cuda"):
        return []  # cpu, mps or one named device (cuda:1): every worker uses that
    import torch

    if not torch.cuda.is_available():
        return []
    return worker_gpus(workers, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


def _fast_malloc() -> contextlib.AbstractContextManager[Any]:
    """Dask config for our local clusters' nannies without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.

    Dask sets it so that glibc hands freed memory back at once (its memory monitor
    then sees less unmanaged memory). Setting it also switches off glibc's dynamic
    mmap threshold, so every large tensor becomes a fresh ``mmap`` with its pages
    faulted in again: torch CPU inference of a 2 mm subject took 8.1 s instead of
    3.9 s here. OMP/MKL/OpenBLAS stay at one thread, as Dask sets them.
    """
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    env = {k: v for k, v in (dask.config.get(key, default={}) or {}).items() if k != "MALLOC_TRIM_THRESHOLD_"}
    return dask.config.set({key: env})


def _dask_log_level() -> int:
    """Dask logs at the root logger's level, INFO at most: its INFO chatter (scheduler started, worker
    registered) only with ``neurosynth -v``; the CLI otherwise shows errors only, a script warnings too."""
    return max(logging.getLogger().getEffectiveLevel(), logging.INFO)


@contextlib.contextmanager
def _dask_logs() -> Iterator[None]:
    logger = logging.getLogger("distributed")
    before = logger.level
    logger.setLevel(_dask_log_level())
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def cohort_client(
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    threads: int = 1,
    device: str = "auto",
    gpus: Sequence[str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> Iterator[Client | None]:
    """A Dask client for a cohort: a new local cluster (``workers``), a running one (``scheduler``), or None.

    The local cluster's dashboard listens on a free port (``client.dashboard_link``);
    both the cluster and the client are closed when the block ends.

    Parameters
    ----------
    workers : int, optional
        Start a local cluster of this many single-threaded worker processes. With
        ``device`` ``auto``/``cuda`` on a CUDA machine, one worker per GPU instead (at
        most ``workers``), each with its own ``CUDA_VISIBLE_DEVICES``.
    scheduler : str, optional
        The address of a running scheduler (``tcp://host:8786``).
    threads : int
        Threads per local worker.
    device : str
        The engine's device; decides whether the local workers get a GPU each.
    gpus : sequence of str, optional
        The ``CUDA_VISIBLE_DEVICES`` of each local worker, one worker per entry,
        instead of the visible GPUs (:func:`worker_gpus`).
    announce : callable, optional
        Told when fewer workers start than asked for (one per GPU).
    """
    if workers is None and not scheduler:
        yield None
        return
    if workers is not None and scheduler:
        raise NeurosynthError("give --workers N (a local cluster) or --scheduler ADDRESS (a running one), not both")
    if workers is not None and workers < 1:
        raise NeurosynthError(f"--workers must be at least 1, not {workers}")
    from distributed import Client

    with contextlib.ExitStack() as stack:
        stack.enter_context(_dask_logs())
        expected = 1
        if scheduler:
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise NeurosynthError(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from None
        else:
            n = int(workers or 1)
            devices = list(gpus) if gpus is not None else _gpus_for(device, n)
            if devices and len(devices) < n and announce:
                announce(f"{n} workers asked for, {len(devices)} GPU(s) here: starting {len(devices)}, one per GPU")
            stack.enter_context(_fast_malloc())
            cluster = stack.enter_context(_local_cluster(n, threads, devices))
            client = Client(cluster)
            expected = len(devices) or n  # all of a local cluster's workers, so that each reports its device
        with client:
            try:
                client.wait_for_workers(expected, timeout=60)
            except TimeoutError:
                where = client.scheduler.address if client.scheduler else scheduler
                raise NeurosynthError(f"no Dask worker joined the scheduler {where} within 60 s") from None
            yield client


def dashboard_link(client: Client) -> str | None:
    """The dashboard's address, or None when the scheduler serves none."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    import importlib.util

    # without bokeh the scheduler's web server answers, but has no dashboard pages to show
    note = "" if importlib.util.find_spec("bokeh") else " (pip install bokeh for its pages)"
    return f"{client.dashboard_link}{note}"


def _map(
    func: Callable[..., Any],
    items: Sequence[Any],
    client: Client | None,
    args: tuple[Any, ...],
    subject_of: Callable[[Any], str],
) -> Iterator[tuple[Any, Any]]:
    """``(item, func(item, *args))`` as they finish: here one after the other, or on the cluster.

    A task that dies with its worker too often (Dask's ``allowed-failures``) comes
    back as a failure row naming the exception; other results are what ``func`` returned.
    """
    if client is None:
        for item in items:
            yield item, func(item, *args)
        return
    from distributed import as_completed

    token = f"{time.time_ns():x}"
    futures = {
        client.submit(func, item, *args, key=f"neurosynth-{subject_of(item)}-{token}", pure=False): item
        for item in items
    }
    for future in as_completed(futures):
        item = futures[future]
        try:
            yield item, future.result()
        except Exception as exc:  # KilledWorker, a lost scheduler, a worker without the package
            yield item, {"subject": subject_of(item), "status": "failed", "reason": _one_line(exc)}
        finally:
            future.release()


@dataclass
class CohortReport:
    """What a cohort run did; ``failures`` are ``(subject, one-line reason)``."""

    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Of the subjects to compute, those whose stale output (older weights of this model) was replaced.
    replaced: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Of ``seconds``, the time to start the cluster and load the model on every worker.
    startup_seconds: float = 0.0
    dashboard: str | None = None
    workers: dict[str, dict] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line: ``6 computed, 0 skipped, 0 failed in 12.3 s (29.3 subjects/min)``.

        Examples
        --------
        >>> CohortReport(computed=["a", "b"], replaced=["b"], skipped=["c"], seconds=3.0).summary()
        '2 computed (1 replacing an older version of the model), 1 skipped, 0 failed in 3.0 s (40.0 subjects/min)'
        """
        replaced = [s for s in self.replaced if s in self.computed]
        stale = f" ({len(replaced)} replacing an older version of the model)" if replaced else ""
        text = (
            f"{len(self.computed)} computed{stale}, {len(self.skipped)} skipped, {len(self.failures)} failed "
            f"in {self.seconds:.1f} s"
        )
        busy = self.seconds - self.startup_seconds
        if self.computed and busy > 0:
            start = f"after {self.startup_seconds:.1f} s of cluster start-up, " if self.startup_seconds else ""
            text += f" ({start}{60 * len(self.computed) / busy:.1f} subjects/min)"
        return text


def run_synthesis(
    model: Model,
    plan: Plan,
    *,
    options: SynthesisOptions | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[str], object] | None = None,
    announce: Callable[[str], None] | None = None,
) -> CohortReport:
    """Run a :func:`plan_synthesis` plan; return what was computed, skipped and failed.

    Parameters
    ----------
    model : Model
        The loaded model (in this process; workers load the same bundle once each).
    plan : Plan
        From :func:`plan_synthesis`. Its skipped subjects and failures are carried
        into the report; nothing starts (no cluster) when it has no tasks.
    options : SynthesisOptions
        Engine options, the same for every subject.
    workers, scheduler
        See :func:`cohort_client`; neither: one subject after the other here.
    progress : callable, optional
        Called with a subject's name each time one finishes (computed or failed).
    announce : callable, optional
        Called with lines worth printing: the dashboard, the device of each worker.
    """
    options = options or SynthesisOptions()
    report = CohortReport(skipped=list(plan.skipped), failures=list(plan.failures), replaced=list(plan.replaced))
    t0 = time.perf_counter()
    if plan.tasks:
        with cohort_client(
            workers, scheduler, threads=options.threads, device=options.device, announce=announce
        ) as client:
            if client is None:
                if announce:
                    announce(f"running {len(plan.tasks)} subject(s) here, one after the other, on "
                             f"{_worker_device(options.device)[1]}")  # fmt: skip
                results: Iterator[tuple[Any, Any]] = _map(
                    synthesize_subject, plan.tasks, None, (model, options), lambda t: t.subject
                )
            else:
                report.dashboard = dashboard_link(client)
                if announce:
                    announce(f"Dask dashboard: {report.dashboard or 'none'}")
                plugin = ModelPlugin(str(model.path), model.card["weights"]["sha256"], options.device)
                # a worker whose setup fails (it cannot read the bundle, say) reports "no model" below,
                # and its subjects fail with that reason; the other workers carry on
                client.register_plugin(plugin)
                report.workers = client.run(_worker_report, plugin.name)
                report.startup_seconds = time.perf_counter() - t0
                if announce:
                    for address, w in report.workers.items():
                        announce(f"worker {address} (pid {w['pid']}) runs on {w['device']}")
                results = _map(_synthesize_on_worker, plan.tasks, client, (plugin.name, options), lambda t: t.subject)
            for task, result in results:
                report.results.append(result)
                if result.get("status") == "computed":
                    report.computed.append(task.subject)
                else:
                    report.failures.append((task.subject, str(result.get("reason", "unknown error"))))
                if progress:
                    progress(task.subject)
    _remove_partials(plan.tasks)
    report.seconds = time.perf_counter() - t0
    return report


def _remove_partials(tasks: Sequence[SynthTask]) -> None:
    """Remove the temporary files a killed worker left beside this run's outputs (its retry wrote
    the output anew); :func:`~napari_neurosynth.atomic.is_partial` names them."""
    for task in tasks:
        for output in (task.output, record_path(task.output)):
            for leftover in output.parent.glob(f".{output.name}.partial-*"):
                if is_partial(leftover):
                    leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------- evaluation

#: Columns of the per subject x region table (CSV and Parquet).
EVAL_COLUMNS = (
    "subject", "region", "label", "n_voxels", "psnr", "ssim", "mae", "nmse",
    "n_lesions", "n_visible", "n_erased", "retained", "cnr_acquired", "cnr_synth", "n_invented",
)  # fmt: skip
#: The metrics the summary and the plot show, in order.
SUMMARY_METRICS = ("psnr", "ssim", "mae", "nmse", "retained")


@dataclass(frozen=True)
class EvalTask:
    """One subject to evaluate: its synthesis, its acquired target and its masks (optional)."""

    subject: str
    synth: Path
    target: Path
    mask: Path | None = None
    lesion: Path | None = None


def plan_evaluation(
    subjects: Mapping[str, Mapping[str, Path]],
    target: str,
    synth_dir: str | os.PathLike[str] | None,
    *,
    mask: str = "brain_mask",
    lesion: str = "lesion_mask",
) -> tuple[list[EvalTask], list[tuple[str, str]]]:
    """Pair each subject's acquired ``target`` with its synthesis; return tasks and failures.

    The synthesis is ``files["synth"]`` when the subject list names one, else
    :func:`output_path` in ``synth_dir`` (where ``neurosynth synthesize --batch`` wrote it).

    Examples
    --------
    >>> tasks, failures = plan_evaluation({"s1": {"brain_mask": Path("m.nii.gz")}}, "t2", "out")
    >>> tasks, failures
    ([], [('s1', 'no acquired t2 image found')])
    """
    tasks: list[EvalTask] = []
    failures: list[tuple[str, str]] = []
    for name, files in subjects.items():
        if target not in files:
            failures.append((name, f"no acquired {target} image found"))
            continue
        synth = files.get("synth") or (output_path(synth_dir, name, target) if synth_dir is not None else None)
        if synth is None or not Path(synth).exists():
            failures.append((name, f"no synthesized image {synth} (run neurosynth synthesize --batch first)"))
            continue
        tasks.append(EvalTask(name, Path(synth), Path(files[target]), files.get(mask), files.get(lesion)))
    return tasks, failures


def _fidelity_columns(lesions: Sequence[Mapping[str, Any]]) -> dict[str, object]:
    visible = [r for r in lesions if r["status"] != "not visible"]
    retained = [r["retained"] for r in visible if np.isfinite(r["retained"])]
    return {
        "n_lesions": len(lesions),
        "n_visible": len(visible),
        "n_erased": sum(r["status"] == "erased" for r in lesions),
        "retained": float(np.median(retained)) if retained else float("nan"),
        "cnr_acquired": float(np.mean([r["acquired"]["cnr"] for r in lesions])) if lesions else float("nan"),
        "cnr_synth": float(np.mean([r["synthesized"]["cnr"] for r in lesions])) if lesions else float("nan"),
    }


def _region_rows(synth: Any, target: Any, brain: Any, labels: Any, label_names: Mapping[int, str]) -> list[dict]:
    """PSNR/SSIM/MAE/NMSE for the brain and each lesion label, from one normalised pair and one SSIM map.

    The brain row is :func:`~napari_neurosynth.metrics.evaluate`'s own; the label rows
    follow its lesion row exactly (the brain's data range, the SSIM map's mean inside
    the label), computed here so that six regions cost one SSIM map rather than six.
    """
    from .metrics import data_range_of, evaluate, mae, nmse, psnr, ssim_map
    from .preprocessing import normalize_intensity

    whole = evaluate(synth, target, mask=brain, kspace=False)
    region = "brain" if brain is not None else "global"
    r = whole["regions"][region]
    rows: list[dict] = [
        {"region": region, "label": 0, **{k: r[k] for k in ("n_voxels", "psnr", "ssim", "mae", "nmse")}}
    ]
    if labels is None:
        return rows
    s = normalize_intensity(np.asarray(synth.data)).astype(np.float64)
    t = normalize_intensity(np.asarray(target.data)).astype(np.float64)
    inside = np.asarray(brain.data) != 0 if brain is not None else None
    rng = data_range_of(t, inside)
    smap = ssim_map(s, t, rng)
    for k in (int(v) for v in np.unique(labels) if v != 0):
        m = labels == k
        rows.append(
            {
                "region": label_names.get(k, f"label {k}"),
                "label": k,
                "n_voxels": int(m.sum()),
                "psnr": psnr(s, t, m, rng),
                "ssim": float(smap[m].mean()),
                "mae": mae(s, t, m),
                "nmse": nmse(s, t, m),
            }
        )
    return rows


def evaluate_subject(task: EvalTask, label_names: Mapping[int, str] | None = None) -> dict:
    """Rows (``EVAL_COLUMNS``) for one subject: the brain (or the whole volume) and each lesion label.

    Metrics as :func:`napari_neurosynth.metrics.evaluate` (intensity-normalised, as
    ``neurosynth evaluate``; a label's row is evaluate's lesion row for that label),
    lesion fidelity from :func:`napari_neurosynth.explain.lesion_fidelity`
    (``retained``: the median, over the region's visible lesions, of synthesized /
    acquired contrast; all lesions for the brain row, which also counts the invented
    ones). Returns ``{"subject", "status", "rows"}`` or a failure with its one-line reason.
    """
    from .explain import lesion_fidelity
    from .io import read_volume
    from .metrics import check_same_grid

    try:
        synth, target = read_volume(task.synth), read_volume(task.target)
        check_same_grid(synth, target, (task.synth.name, task.target.name))
        brain = read_volume(task.mask) if task.mask else None
        lesion = read_volume(task.lesion) if task.lesion else None
        labels = np.asarray(lesion.data).astype(np.int64) if lesion is not None else None
        if lesion is not None:
            check_same_grid(lesion, target, (task.lesion.name if task.lesion else "lesion", task.target.name))
        rows = _region_rows(synth, target, brain, labels, label_names or {})
        if lesion is not None and brain is not None:
            fid = lesion_fidelity(synth, target, lesion=lesion, mask=brain)
            rows[0].update(_fidelity_columns(fid["lesions"]), n_invented=fid["n_invented"])
            for row in rows[1:]:
                row.update(_fidelity_columns([x for x in fid["lesions"] if x["label"] == row["label"]]))
        return {"subject": task.subject, "status": "computed", "rows": [{"subject": task.subject, **r} for r in rows]}
    except Exception as exc:  # one bad subject must not stop the cohort
        return {"subject": task.subject, "status": "failed", "reason": _one_line(exc)}


def run_evaluation(
    tasks: Sequence[EvalTask],
    *,
    label_names: Mapping[int, str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[str], object] | None = None,
    announce: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Evaluate subjects here or on a cluster; return ``(rows sorted by subject, failures)``."""
    rows: list[dict] = []
    failures: list[tuple[str, str]] = []
    if not tasks:
        return rows, failures
    with cohort_client(workers, scheduler) as client:
        if client is not None and announce:
            announce(f"Dask dashboard: {dashboard_link(client) or 'none'}")
        for task, result in _map(
            evaluate_subject, list(tasks), client, (dict(label_names or {}),), lambda t: t.subject
        ):
            if result.get("status") == "computed":
                rows.extend(result["rows"])
            else:
                failures.append((task.subject, str(result.get("reason"))))
            if progress:
                progress(task.subject)
    order = {t.subject: i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: (order[r["subject"]], r["label"]))
    return rows, failures


def summarize_cohort(rows: Sequence[Mapping[str, object]], confidence: float = 0.95) -> list[dict[str, object]]:
    """Mean and Student-t confidence interval per region and metric, over subjects (finite values only).

    Examples
    --------
    >>> rows = [{"region": "brain", "psnr": p, "ssim": 0.9} for p in (20.0, 22.0, 24.0)]
    >>> s = summarize_cohort(rows)[0]
    >>> s["region"], s["metric"], s["n"], s["mean"], round(s["ci_low"], 2), round(s["ci_high"], 2)
    ('brain', 'psnr', 3, 22.0, 17.03, 26.97)
    """
    from .study_stats import mean_ci

    regions = list(dict.fromkeys(str(r["region"]) for r in rows))
    out: list[dict[str, object]] = []
    for region in regions:
        for metric in SUMMARY_METRICS:
            values = [r.get(metric) for r in rows if r["region"] == region]
            finite = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
            if finite:
                out.append({"region": region, "metric": metric, **mean_ci(finite, confidence)})
    return out


def plot_cohort(rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str]) -> Path:
    """Save a PNG: per metric, a box plot over subjects for each region with the subjects as points.

    Uses matplotlib's object API on an Agg canvas (no pyplot state; safe on any thread).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    regions = list(dict.fromkeys(str(r["region"]) for r in rows))
    metrics = [m for m in SUMMARY_METRICS if any(isinstance(r.get(m), (int, float)) for r in rows)]
    fig = Figure(figsize=(3.2 * len(metrics), 0.35 * len(regions) + 3.2), dpi=100)
    FigureCanvasAgg(fig)
    rng = np.random.default_rng(0)  # fixed jitter: the same table gives the same picture
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        data = []
        for region in regions:
            v = np.array([r.get(metric) for r in rows if r["region"] == region], dtype=float)
            data.append(v[np.isfinite(v)])
        positions = [j for j, d in enumerate(data) if d.size]
        ax.boxplot([data[j] for j in positions], positions=positions, widths=0.6, showfliers=False)
        for j in positions:
            ax.plot(j + rng.uniform(-0.15, 0.15, data[j].size), data[j], "o", ms=3, alpha=0.6, color="tab:blue")
        ax.set_xticks(range(len(regions)), regions, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric.upper() if metric != "retained" else "lesion contrast retained")
    fig.suptitle(f"Cohort evaluation ({len({r['subject'] for r in rows})} subjects)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_evaluation(
    rows: Sequence[Mapping[str, object]], out_dir: str | os.PathLike[str], *, force: bool = False
) -> dict[str, Path]:
    """Write ``cohort_metrics.csv``, ``.parquet``, ``cohort_summary.csv`` and ``cohort_metrics.png``.

    Every file is written atomically; existing ones are refused unless ``force``.
    Non-finite numbers are empty CSV cells and Parquet nulls.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .export import write_csv

    out = Path(out_dir)
    names = {
        "metrics_csv": "cohort_metrics.csv",
        "metrics_parquet": "cohort_metrics.parquet",
        "summary_csv": "cohort_summary.csv",
        "plot": "cohort_metrics.png",
    }
    paths = {k: check_output_path(out / v, force=force) for k, v in names.items()}
    if not rows:
        raise NeurosynthError("no subject could be evaluated; nothing to write")
    write_csv(rows, paths["metrics_csv"], EVAL_COLUMNS)

    def cell(v: object) -> object:
        return None if isinstance(v, float) and not np.isfinite(v) else v

    table = pa.Table.from_pylist([{c: cell(r.get(c)) for c in EVAL_COLUMNS} for r in rows])
    with atomic_path(paths["metrics_parquet"]) as tmp:
        pq.write_table(table, tmp)
    write_csv(
        summarize_cohort(rows), paths["summary_csv"], ("region", "metric", "n", "mean", "sd", "ci_low", "ci_high")
    )
    plot_cohort(rows, paths["plot"])
    return paths
