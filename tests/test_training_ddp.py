"""Training at scale: two real gloo processes under torchrun match one process; mixed precision.

The two-process runs are real ``torchrun`` launches of ``neurosynth train`` (the
``torch.distributed.run`` module, ``--standalone`` so it picks a free port) on a
tiny 3 mm phantom written to NIfTI files with a CSV manifest. The reference is
``neurosynth train`` in this process with the same arguments and the same global
batch.

What "match" means: every weight agrees to 1e-6, except the bias of a convolution
that feeds an instance norm. The norm subtracts the per-channel mean, so that
bias's true gradient is exactly zero and what it gets is rounding noise, whose
sum order differs between one process and DDP's all-reduce; Adam divides by the
noise's own magnitude and so moves it by up to ``lr`` per step either way. The
bias cannot change the output, and the output of the two bundles on a whole
phantom volume, through the inference engine, agrees to 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_neurosynth import write_volume
from napari_neurosynth.bundle import load_model
from napari_neurosynth.cli import main as cli_main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.inference import synthesize
from napari_neurosynth.training import TrainConfig, Trainer
from napari_neurosynth.training.distributed import Distributed, setup_distributed

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo"),
]

#: --batch 4 is the global batch: 2 patches per process under torchrun --nproc_per_node 2.
#: --lr-decay-start 1 keeps the rate constant, so a 1-epoch run resumed to 2 is a 2-epoch run.
ARGS = [
    "--name", "tiny", "--patch", "32", "--batch", "4", "--steps", "3",
    "--arch-args", "base=4,n_blocks=1", "--disc-base", "4", "--disc-layers", "2",
    "--lr-decay-start", "1", "--device", "cpu", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, phantom3) -> Path:
    """The 3 mm phantom as NIfTI files and a CSV manifest (each process reads them faster than it makes one)."""
    folder = tmp_path_factory.mktemp("ddp_data")
    rows = ["subject,t1,t2,mask,lesion"]
    for key, name in (("t1", "t1"), ("t2", "t2"), ("brain_mask", "mask"), ("lesion_mask", "lesion")):
        write_volume(phantom3[key], folder / f"{name}.nii.gz")
    rows.append("s0,t1.nii.gz,t2.nii.gz,mask.nii.gz,lesion.nii.gz")
    (folder / "subjects.csv").write_text("\n".join(rows) + "\n")
    return folder / "subjects.csv"


def _with(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced."""
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def _data(manifest: Path) -> list[str]:
    return ["--data", str(manifest)]  # a manifest has no default validation data: none, to keep it fast


def _torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m napari_neurosynth train ARGS`` as a real subprocess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [*cmd, "-m", "napari_neurosynth", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory, manifest) -> Path:
    """The reference, one process: 1 epoch (checkpoint kept as ``ck1``), then resumed to 2 epochs (bundle ``e2``)."""
    root = tmp_path_factory.mktemp("single")
    base = [*ARGS, *_data(manifest), "--checkpoint-dir", str(root / "ck")]
    assert cli_main(["train", *base, "--epochs", "1", "-o", str(root / "e1")]) == 0
    shutil.copytree(root / "ck", root / "ck1")
    assert cli_main(["train", *base, "--epochs", "2", "--resume", "-o", str(root / "e2")]) == 0
    return root


def _instance_norm_biases(weights: dict) -> set[str]:
    """Conv biases right before an instance norm (MONAI's ``conv`` + ``adn.N`` pairs): output-invariant."""
    return {k for k in weights if k.endswith(".conv.bias") and k[: -len("conv.bias")] + "adn.N.weight" in weights}


def _assert_same_model(bundle_a: Path, bundle_b: Path, phantom) -> None:
    a, b = load_file(str(bundle_a / "weights.safetensors")), load_file(str(bundle_b / "weights.safetensors"))
    assert a.keys() == b.keys()
    free = _instance_norm_biases(a)
    assert free, "the tiny ResNet has conv biases before instance norms"
    for key in sorted(set(a) - free):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=0, atol=1e-6, err_msg=key)
    # and what a user sees: the two bundles synthesize the same T2 from a whole phantom T1
    out_a = synthesize(load_model(bundle_a), phantom["t1"], device="cpu")
    out_b = synthesize(load_model(bundle_b), phantom["t1"], device="cpu")
    assert np.abs(out_a).max() > 0.1  # trained a little, not all zeros
    np.testing.assert_allclose(out_a, out_b, rtol=0, atol=1e-5)


def test_two_gloo_processes_resume_and_match_one_process(tmp_path, manifest, single, phantom3):
    # One torchrun launch (a launch costs two imports of torch and MONAI): two gloo processes resume
    # the single process's epoch-1 checkpoint (every rank loads it) and train epoch 2 with the same
    # global batch. Every rank draws the whole global batch from the one seeded stream, so a
    # checkpoint does not depend on the number of processes that wrote or reads it.
    ck = tmp_path / "ck"
    shutil.copytree(single / "ck1", ck)
    args = [
        *ARGS,
        *_data(manifest),
        "--checkpoint-dir",
        str(ck),
        "--epochs",
        "2",
        "--resume",
        "-o",
        str(tmp_path / "e2"),
    ]
    run = _torchrun(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    # rank 0 alone logs, checkpoints and exports: one of each
    assert run.stderr.count("resumed from") == 1 and run.stderr.count("epoch 2  step 6") == 1, run.stderr[-3000:]
    assert run.stdout.count("wrote bundle") == 1, run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "e2"]
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == 6
    recipe = json.loads((tmp_path / "e2" / "card.json").read_text())["training"]["recipe"]
    assert (recipe["processes"], recipe["batch"], recipe["precision"]) == (2, 4, "fp32")
    # the checkpoint rank 0 wrote holds the exported generator
    saved = load_file(str(ck / "checkpoint.safetensors"))
    exported = load_file(str(tmp_path / "e2" / "weights.safetensors"))
    assert all(torch.equal(saved[f"net.G.{k}"], v) for k, v in exported.items())
    _assert_same_model(single / "e2", tmp_path / "e2", phantom3)


def test_global_batch_must_divide_among_processes(tmp_path, manifest, monkeypatch, capsys):
    # what torchrun sets for each of 2 processes; the batch is refused before any process group starts
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(NeurosynthError, match=r"--batch 3 is the global batch and must be divisible by the 2"):
        setup_distributed("cpu", batch=3)
    args = _with(ARGS, "--batch", "3")
    assert cli_main(["train", *args, *_data(manifest), "--epochs", "1", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --batch 2 or 4" in err[0], err
    assert not (tmp_path / "b").exists()
    # the library refuses it too (Trainer checks its Distributed)
    cfg = TrainConfig(batch=6)
    with pytest.raises(NeurosynthError, match="divisible by the 4 processes; use --batch 4 or 8"):
        Trainer(cfg, subjects=[], dist=Distributed(rank=0, world_size=4))


def test_cuda_device_index_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(NeurosynthError, match="each process uses cuda:LOCAL_RANK; pass --device cuda"):
        setup_distributed("cuda:1", batch=4)


def test_fp16_on_the_cpu_is_refused_and_amp_falls_back(tmp_path, manifest, capsys):
    common = [*ARGS, *_data(manifest), "--epochs", "1", "--steps", "1"]
    assert cli_main(["train", *common, "--precision", "fp16", "-o", str(tmp_path / "fp16")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "neurosynth train: error: --precision fp16 needs a GPU (--device cuda); on the CPU train in bf16 or fp32"
    ]
    assert cli_main(["train", *common, "--amp", "-o", str(tmp_path / "amp")]) == 0
    assert "--amp on the CPU: training in fp32" in capsys.readouterr().err
    card = json.loads((tmp_path / "amp" / "card.json").read_text())
    assert card["training"]["recipe"]["precision"] == "fp32"
    assert cli_main(["train", *common, "--amp", "--precision", "bf16", "-o", str(tmp_path / "both")]) == 2


def test_bf16_autocast_trains_on_the_cpu(tmp_path, manifest, phantom3):
    args = [*ARGS, *_data(manifest), "--epochs", "1", "--steps", "2", "--precision", "bf16"]
    assert cli_main(["train", *args, "-o", str(tmp_path / "bf16")]) == 0
    card = json.loads((tmp_path / "bf16" / "card.json").read_text())
    assert card["training"]["recipe"]["precision"] == "bf16"
    row = card["training"]["history"][-1]
    assert all(np.isfinite(row[k]) for k in ("l1", "adv", "d", "g"))
    weights = load_file(str(tmp_path / "bf16" / "weights.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float32}  # autocast keeps the master weights fp32
    out = synthesize(load_model(tmp_path / "bf16"), phantom3["t1"], device="cpu")
    assert out.shape == phantom3["t1"].shape and np.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_with_grad_scaler_on_cuda(tmp_path, manifest):
    args = [*ARGS, *_data(manifest), "--epochs", "1", "--steps", "2", "--precision", "fp16"]
    args = _with(args, "--device", "cuda")
    ck = tmp_path / "ck"
    assert cli_main(["train", *args, "--checkpoint-dir", str(ck), "-o", str(tmp_path / "fp16")]) == 0
    card = json.loads((tmp_path / "fp16" / "card.json").read_text())
    assert card["training"]["recipe"]["precision"] == "fp16"
    assert np.isfinite(card["training"]["history"][-1]["l1"])
    scaler = json.loads((ck / "checkpoint.json").read_text())["grad_scaler"]
    assert scaler["scale"] > 0  # the loss scale is kept for --resume
