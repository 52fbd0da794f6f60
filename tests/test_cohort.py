"""Cohort synthesis and evaluation on a real Dask cluster (issue 18, the Dask half).

Six 3 mm subjects through the shipped ``t1_to_t2`` model: ``--workers 2`` gives the
bytes of the one-process run; a worker killed with SIGKILL mid-run still leaves all
six outputs; a rerun computes nothing; bad subjects are listed with their reason
while the others finish; the cohort evaluation writes its tables and plot.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_neurosynth.cli import main
from napari_neurosynth.cohort import record_path

MODEL = "t1_to_t2"
SUBJECTS = [f"sub-{i:02d}" for i in range(6)]


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*_t2_synth.nii.gz"))}


def _slab(volume, first: int = 20, last: int = 42):
    """Axial slices ``first:last`` of a volume (its affine moved with them): a 3 mm slab that holds every
    lesion kind of the phantom, a third of the slices, so a subject takes a third of the time."""
    from napari_neurosynth.io import Volume

    shift = np.eye(4)
    shift[2, 3] = first
    return Volume(np.ascontiguousarray(volume.data[:, :, first:last]), volume.affine @ shift)


@pytest.fixture(scope="module")
def data(tmp_path_factory, phantom3) -> Path:
    """Six subjects (BraTS-style names): a slab of the 3 mm phantom with a per-subject gain and noise."""
    from napari_neurosynth import write_volume

    folder = tmp_path_factory.mktemp("cohort") / "data"
    rng = np.random.default_rng(1)
    for i, name in enumerate(SUBJECTS):
        for m in ("t1", "t2"):
            d = _slab(phantom3[m]).data * (1 + 0.02 * i)
            d = d + rng.normal(0, 0.01 * float(d.max()), d.shape)
            write_volume(_slab(phantom3[m]).with_data(d.astype(np.float32)), folder / f"{name}_{m}.nii.gz")
        for m in ("brain_mask", "lesion_mask"):
            write_volume(_slab(phantom3[m]), folder / f"{name}_{m}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The one-process run (no Dask), the baseline every distributed run must match bit for bit."""
    out = tmp_path_factory.mktemp("cohort") / "reference"
    assert main(["synthesize", "--batch", str(data), "--model", MODEL, "-o", str(out), "-q"]) == 0
    assert len(_outputs(out)) == 6
    return out


@pytest.fixture(scope="module")
def cluster():
    """A running two-process cluster that the command joins with --scheduler (as on a real one)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc,
        Client(lc) as client,
    ):
        yield client


def _differences(out: Path, reference: Path) -> str:
    """The outputs that differ from the reference, with the engine details of both records (for the message)."""
    mine, ref = _outputs(out), _outputs(reference)
    lines = []
    for name in sorted(set(mine) | set(ref)):
        if mine.get(name) != ref.get(name):
            info = [json.loads(record_path(d / name).read_text())["inference"] for d in (out, reference)]
            lines.append(f"{name}: " + " vs reference ".join(
                f"batch {i['batch_size']} oom {i['oom_retries']} device {i['device']}" for i in info))  # fmt: skip
    return "; ".join(lines)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_two_workers_match_one_process_and_a_rerun_computes_nothing(data, reference, tmp_path, capfd):
    out = tmp_path / "out"
    args = ["synthesize", "--batch", str(data), "--model", MODEL, "-o", str(out), "--workers", "2"]
    assert main(args) == 0
    stdout, stderr = capfd.readouterr()
    assert "6 computed, 0 skipped, 0 failed" in stdout
    assert "Dask dashboard: http://" in stderr
    workers = [line for line in stderr.splitlines() if line.startswith("worker tcp://")]
    assert len(workers) == 2 and all(line.endswith("runs on cpu") for line in workers)
    bar = [line for line in stderr.replace("\r", "\n").splitlines() if "/6 subject" in line]
    assert bar and "6.0/6 subject" in bar[-1]  # one bar over the six subjects, full at the end
    assert _outputs(out) == _outputs(reference), _differences(out, reference)  # bit-identical
    record = json.loads((out / "sub-03_t2_synth.json").read_text())
    assert record["model"]["name"] == MODEL and len(record["model"]["sha256"]) == 64
    assert record["Sources"] == [str(data / "sub-03_t1.nii.gz")]
    assert record["output_sha256"] == hashlib.sha256((out / "sub-03_t2_synth.nii.gz").read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_t2_synth.{ext}" for s in SUBJECTS for ext in ("nii.gz", "json")
    )  # no temporary file left

    # the rerun plans everything away: no cluster, nothing computed, no file touched
    before = _mtimes(out)
    assert main([*args, "-q"]) == 0
    stdout, stderr = capfd.readouterr()
    assert "0 computed, 6 skipped, 0 failed" in stdout
    assert "Dask dashboard" not in stderr and "worker tcp://" not in stderr
    assert _mtimes(out) == before


def test_a_worker_killed_mid_run_is_retried_by_dask(data, reference, cluster, tmp_path):
    out = tmp_path / "out"
    address = cluster.scheduler.address
    before = set(cluster.run(os.getpid).values())
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_neurosynth", "synthesize", "--batch", str(data), "--model", MODEL,
         "-o", str(out), "--scheduler", address, "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed = None
    deadline = time.monotonic() + 180
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        busy = [w for w, keys in cluster.processing().items() if any("neurosynth-" in str(k) for k in keys)]
        if busy and _outputs(out):  # one subject done, others running: mid-run
            pid = cluster.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed = (pid, len(_outputs(out)))
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=240)
    assert killed is not None, f"the run ended before a worker could be killed: {stdout} {stderr}"
    assert killed[1] < 6
    assert proc.returncode == 0, stderr
    assert "6 computed, 0 skipped, 0 failed" in stdout
    assert _outputs(out) == _outputs(reference), _differences(out, reference)
    assert len(list(out.iterdir())) == 12  # six outputs, six records, no partial file of the killed worker
    cluster.wait_for_workers(2, timeout=60)
    after = set(cluster.run(os.getpid).values())
    assert killed[0] in before and killed[0] not in after  # the nanny started a new worker process


def test_failing_subjects_are_listed_while_the_others_finish(data, reference, cluster, tmp_path, capfd):
    from napari_neurosynth import write_volume
    from napari_neurosynth.io import Volume

    batch = tmp_path / "batch"
    batch.mkdir()
    for name in SUBJECTS[:2]:
        (batch / f"{name}_t1.nii.gz").write_bytes((data / f"{name}_t1.nii.gz").read_bytes())
    good = (data / "sub-00_t1.nii.gz").read_bytes()
    (batch / "cut_t1.nii.gz").write_bytes(good[: len(good) // 2])  # a truncated download
    write_volume(Volume(np.ones((8, 8, 1), np.float32), np.eye(4)), batch / "flat_t1.nii.gz")  # one slice
    out = tmp_path / "out"
    rc = main(["synthesize", "--batch", str(batch), "--model", MODEL, "-o", str(out), "-q",
               "--scheduler", cluster.scheduler.address])  # fmt: skip
    stdout, stderr = capfd.readouterr()
    assert rc == 1
    assert "2 computed, 0 skipped, 2 failed" in stdout
    reasons = dict(line.strip().split(": ", 1) for line in stderr.splitlines() if line.startswith("  "))
    assert set(reasons) == {"cut", "flat"}
    assert "cut_t1.nii.gz" in reasons["cut"] and "\n" not in reasons["cut"]
    assert sorted(_outputs(out)) == ["sub-00_t2_synth.nii.gz", "sub-01_t2_synth.nii.gz"]
    assert _outputs(out)["sub-00_t2_synth.nii.gz"] == _outputs(reference)["sub-00_t2_synth.nii.gz"]

    # each worker loaded the model once, however many cohorts it ran (the restarted one too)
    from napari_neurosynth.bundle import load_model

    name = f"neurosynth-model-{load_model(MODEL).card['weights']['sha256'][:16]}-auto"
    loads = cluster.run(lambda dask_worker: dask_worker.plugins[name].loads)
    assert list(loads.values()) == [1, 1]


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> Path:
    """The shipped model retrained: the same name and card, other weights (so another sha256)."""
    import torch

    from napari_neurosynth.bundle import load_model, save_bundle

    model = load_model(MODEL)
    with torch.no_grad():
        for param in model.network.parameters():
            param.mul_(1.01)
    return save_bundle(model.network, model.card, tmp_path_factory.mktemp("bundle") / MODEL)


def test_a_retrained_model_recomputes_and_each_worker_loads_it_once(data, reference, retrained, cluster, tmp_path):
    from napari_neurosynth.bundle import load_model
    from napari_neurosynth.cli.synthesize import find_subjects
    from napari_neurosynth.cohort import plan_synthesis, run_synthesis

    out = _copy(reference, tmp_path / "out")  # the old model's outputs, untouched
    model = load_model(retrained)
    sha = model.card["weights"]["sha256"]
    assert model.name == MODEL and sha != load_model(MODEL).card["weights"]["sha256"]
    plan = plan_synthesis(find_subjects(str(data), ["t1"]), ["t1"], "t2", out, sha, model_name=model.name)
    assert sorted(plan.replaced) == SUBJECTS and not plan.skipped and not plan.failures  # no --force needed
    report = run_synthesis(model, plan, scheduler=cluster.scheduler.address)
    assert report.summary().startswith("6 computed (6 replacing an older version of the model), 0 skipped, 0 failed")
    new = _outputs(out)
    assert sorted(new) == sorted(_outputs(reference)) and all(new[k] != v for k, v in _outputs(reference).items())
    assert json.loads((out / "sub-05_t2_synth.json").read_text())["model"]["sha256"] == sha

    # six subjects on two workers, the model loaded once on each (a worker plugin, not per task)
    pids = [r["worker"] for r in report.results]
    assert len(pids) == 6 and set(pids) == {w["pid"] for w in report.workers.values()}
    assert [w["loads"] for w in report.workers.values()] == [1, 1]

    # a rerun with the new model computes nothing
    before = _mtimes(out)
    again = run_synthesis(model, plan_synthesis(find_subjects(str(data), ["t1"]), ["t1"], "t2", out, sha,
                                                model_name=model.name))  # fmt: skip
    assert (again.computed, sorted(again.skipped), again.failures) == ([], SUBJECTS, [])
    assert _mtimes(out) == before


def test_an_output_of_another_model_is_refused_unless_force(data, reference, tmp_path, capfd):
    out = _copy(reference, tmp_path / "out")
    sidecar = out / "sub-02_t2_synth.json"
    record = json.loads(sidecar.read_text())
    record["model"].update(name="t1_to_t2_other", sha256="0" * 64)
    sidecar.write_text(json.dumps(record))
    (out / "sub-04_t2_synth.nii.gz").write_bytes((out / "sub-01_t2_synth.nii.gz").read_bytes())  # edited by hand
    args = ["synthesize", "--batch", str(data), "--model", MODEL, "-o", str(out), "-q"]
    assert main(args) == 1
    stdout, stderr = capfd.readouterr()
    assert "0 computed, 4 skipped, 2 failed" in stdout
    assert "sub-02: sub-02_t2_synth.nii.gz was made by model t1_to_t2_other weights sha256 000000000000" in stderr
    assert "sub-04: sub-04_t2_synth.nii.gz was changed after it was written" in stderr
    assert stderr.count("pass --force to replace it") == 2
    assert main([*args, "--force"]) == 0
    assert "2 computed, 4 skipped, 0 failed" in capfd.readouterr().out
    assert _outputs(out) == _outputs(reference)


def test_each_local_gpu_worker_sees_its_own_gpu_also_after_a_restart():
    """The CUDA_VISIBLE_DEVICES path (no dask-cuda): a real cluster, checked on the workers' environment.

    Without a GPU here the devices are only names; the workers still run (on the CPU).
    """
    import torch

    from napari_neurosynth.cohort import _worker_device, cohort_client

    with cohort_client(2, gpus=["1", "0"]) as client:
        env = client.run(lambda: (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")))
        assert sorted(v for _, v in env.values()) == ["0", "1"]
        address, (pid, _) = next(iter(env.items()))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the nanny's new worker process has joined
            workers = set(client.scheduler_info()["workers"])
            if len(workers) == 2 and address not in workers:
                break
            time.sleep(0.2)
        now = client.run(lambda: (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")))
        assert len(now) == 2 and pid not in {p for p, _ in now.values()}
        assert sorted(v for _, v in now.values()) == ["0", "1"]  # the restarted worker has its GPU again
        # what each worker says it runs on: here, without CUDA, the CPU
        if not torch.cuda.is_available():
            assert set(client.run(lambda: _worker_device("auto")[1]).values()) == {"cpu"}


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (the CPU path is tested above)"
)
def test_cuda_workers_say_which_gpu_they_use(data, tmp_path, capfd):
    import torch

    out = tmp_path / "out"
    args = ["synthesize", "--batch", str(data), "--model", MODEL, "-o", str(out), "-q", "--workers", "2"]
    assert main(args) == 0
    stdout, stderr = capfd.readouterr()
    assert "6 computed, 0 skipped, 0 failed" in stdout
    lines = [line for line in stderr.splitlines() if line.startswith("worker tcp://")]
    assert len(lines) == min(2, torch.cuda.device_count())
    assert all("runs on cuda:0 (" in line and "CUDA_VISIBLE_DEVICES=" in line for line in lines)
    assert len({line.rsplit("CUDA_VISIBLE_DEVICES=", 1)[1] for line in lines}) == len(lines)  # one GPU each


def test_cohort_evaluation_tables_summary_and_plot(data, reference, cluster, tmp_path, capfd):
    import pyarrow.parquet as pq

    from napari_neurosynth import read_volume, write_volume
    from napari_neurosynth.io import Volume
    from napari_neurosynth.metrics import evaluate

    # a seventh subject whose acquired T2 lies on another grid than its synthesis
    batch, synth = tmp_path / "batch", tmp_path / "synth"
    batch.mkdir()
    synth.mkdir()
    for p in data.iterdir():
        (batch / p.name).write_bytes(p.read_bytes())
    for p in reference.glob("*.nii.gz"):
        (synth / p.name).write_bytes(p.read_bytes())
    t2 = read_volume(data / "sub-00_t2.nii.gz")
    write_volume(Volume(t2.data[::2, ::2, ::2].copy(), t2.affine @ np.diag([2, 2, 2, 1.0])), batch / "grid_t2.nii.gz")
    (synth / "grid_t2_synth.nii.gz").write_bytes((reference / "sub-00_t2_synth.nii.gz").read_bytes())

    report = tmp_path / "report"
    args = ["evaluate", "--batch", str(batch), "--modality", "t2", "--synth-dir", str(synth), "-o", str(report), "-q"]
    assert main([*args, "--scheduler", cluster.scheduler.address]) == 1
    stdout, stderr = capfd.readouterr()
    assert "grid:" in stderr and "grid" in stderr.split("grid:", 1)[1].lower()
    rows = (report / "cohort_metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    table = [dict(zip(header, r.split(","))) for r in rows[1:]]
    labels = sorted({int(v) for v in np.unique(read_volume(data / "sub-00_lesion_mask.nii.gz").data) if v})
    assert len(table) == 6 * (1 + len(labels))  # subject x (brain + each lesion kind)
    assert {r["region"] for r in table} >= {"brain", "tumour core", "oedema"}
    assert pq.read_table(report / "cohort_metrics.parquet").num_rows == len(table)

    # the brain row is what `evaluate` says for that subject
    direct = evaluate(
        read_volume(synth / "sub-04_t2_synth.nii.gz"),
        read_volume(data / "sub-04_t2.nii.gz"),
        mask=read_volume(data / "sub-04_brain_mask.nii.gz"),
        kspace=False,
    )
    row = next(r for r in table if r["subject"] == "sub-04" and r["region"] == "brain")
    assert float(row["psnr"]) == pytest.approx(direct["psnr_brain"], rel=1e-9)
    assert float(row["ssim"]) == pytest.approx(direct["ssim_brain"], rel=1e-9)
    assert 0 <= int(row["n_erased"]) <= int(row["n_lesions"])

    summary = (report / "cohort_summary.csv").read_text().splitlines()
    brain_psnr = next(line.split(",") for line in summary if line.startswith("brain,psnr,"))
    n, mean, low, high = int(brain_psnr[2]), float(brain_psnr[3]), float(brain_psnr[5]), float(brain_psnr[6])
    psnrs = [float(r["psnr"]) for r in table if r["region"] == "brain"]
    assert n == 6 and mean == pytest.approx(np.mean(psnrs)) and low < mean < high
    assert "brain           psnr" in stdout
    assert (report / "cohort_metrics.png").read_bytes()[:4] == b"\x89PNG"

    # the tables exist now: a second run is refused before computing anything, unless --force
    assert main(args) == 2
    assert "cohort_metrics.csv already exists" in capfd.readouterr().err
