"""Training loops on a tiny 3 mm phantom: loss goes down, resume is exact, bundles load and run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_neurosynth.bundle import load_model
from napari_neurosynth.cli import main as cli_main
from napari_neurosynth.data import Subject
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.inference import synthesize
from napari_neurosynth.training import TrainConfig, Trainer, export_bundle, load_checkpoint

TINY = {"base": 4, "n_blocks": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subject(ph, name, modalities=("t1", "t2", "flair", "t2_lowres")) -> Subject:
    return Subject(
        name, {m: ph[m] for m in modalities}, ph["brain_mask"].data > 0, ph["lesion_mask"].data.astype(np.uint8)
    )


@pytest.fixture(scope="module")
def subjects(phantom3):
    from napari_neurosynth import make_phantom

    other = make_phantom(seed=1, lesions=True, resolution=3.0)
    return [_subject(phantom3, "p0"), _subject(other, "p1")]


def _grid(subjects, modalities):
    return [s.on_grid_of(modalities[0], keep=modalities) for s in subjects]


def _fixed_eval(trainer: Trainer, n=6):
    """A fixed batch (own RNG) to measure the generator's loss before and after training."""
    from napari_neurosynth.data import SliceSampler

    cfg = trainer.cfg
    inputs = cfg.inputs
    s = SliceSampler(trainer.train_subjects, inputs, cfg.output, cfg.context, cfg.patch, np.random.default_rng(99))
    x, y, _ = s.batch(n)
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def loss():
        with torch.no_grad():
            trainer.G.eval()
            if cfg.mode == "unpaired":  # cycle reconstruction of the source
                value = float((trainer.F(trainer.G(x)) - x).abs().mean())
            else:
                value = float((trainer.G(x) - y).abs().mean())
            trainer.G.train()
        return value

    return loss


@pytest.mark.parametrize(
    "mode,inputs,output,arch,args,context,extra",
    [
        ("paired", ["t1"], "t2", "resnet", TINY, 1, {}),
        ("paired", ["t1", "t2"], "flair", "fusion", TINY, 1, {}),
        ("mcsr", ["t1", "t2_lowres"], "t2", "mcsr", TINY, 0, {}),
        ("unpaired", ["t1"], "t2", "resnet", TINY, 0, {}),
        ("unpaired", ["t1"], "t2", "resnet", TINY, 0, {"disc_blur": 1.0, "cycle_blur": 1.0}),
    ],
    ids=["paired", "multi-input", "mcsr", "unpaired", "unpaired-low-pass"],
)
def test_a_few_steps_lower_the_loss(subjects, mode, inputs, output, arch, args, context, extra):
    cfg = TrainConfig(
        mode=mode,
        inputs=inputs,
        output=output,
        data="phantom:0-1",
        architecture=arch,
        arch_args=args,
        context=context,
        patch=32,
        batch=4,
        epochs=1,
        steps_per_epoch=12,
        lr=2e-3,
        disc_base=4,
        seed=0,
        device="cpu",
        **extra,
    )
    trainer = Trainer(cfg, subjects=_grid(subjects, [*inputs, output]), val_subjects=[])
    loss = _fixed_eval(trainer)
    before = loss()
    history = trainer.fit(progress=False)
    after = loss()
    assert trainer.step == 12 and len(history) == 1
    assert after < 0.8 * before, (before, after)


def test_resume_is_identical_to_an_uninterrupted_run(subjects, tmp_path):
    mods = ["t1", "t2"]

    def cfg(epochs):
        return TrainConfig(
            mode="paired",
            inputs=["t1"],
            output="t2",
            data="phantom:0-1",
            arch_args=TINY,
            context=1,
            patch=32,
            batch=2,
            epochs=epochs,
            steps_per_epoch=3,
            disc_base=4,
            seed=7,
        )

    straight = Trainer(cfg(2), subjects=_grid(subjects, mods), val_subjects=[])
    straight.fit(tmp_path / "a", progress=False)

    first = Trainer(cfg(2), subjects=_grid(subjects, mods), val_subjects=[])
    first.fit(tmp_path / "b", progress=False, stop_after=1)  # "interrupted" after epoch 1 of 2
    meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert meta["step"] == 3 and meta["epoch"] == 1
    assert not list((tmp_path / "b").glob("*.pt*"))  # no pickles, safetensors + JSON only
    resumed = Trainer(cfg(2), subjects=_grid(subjects, mods), val_subjects=[])
    resumed.fit(tmp_path / "b", resume=True, progress=False)
    assert resumed.step == straight.step == 6
    for k, v in straight.G.state_dict().items():
        assert torch.equal(v, resumed.G.state_dict()[k]), k
    for k, v in straight.D.state_dict().items():
        assert torch.equal(v, resumed.D.state_dict()[k]), k
    assert [h["g"] for h in resumed.history] == [h["g"] for h in straight.history]

    # a checkpoint of another configuration is refused
    other = Trainer(
        TrainConfig(
            mode="paired",
            inputs=["t1"],
            output="t2",
            data="phantom:0-1",
            arch_args={"base": 4, "n_blocks": 2},
            context=1,
            patch=32,
            batch=2,
            epochs=2,
            steps_per_epoch=3,
            disc_base=4,
            seed=7,
        ),
        subjects=_grid(subjects, mods),
        val_subjects=[],
    )
    with pytest.raises(NeurosynthError, match="checkpoint was trained with arch_args"):
        other.fit(tmp_path / "b", resume=True, progress=False)
    with pytest.raises(NeurosynthError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing", {}, {})


def test_unpaired_resume_keeps_image_pool_and_weight_average(subjects, tmp_path):
    """The CycleGAN extras (image history, EMA generator) survive a checkpoint bit for bit."""
    mods = ["t1", "t2"]

    def cfg():
        return TrainConfig(
            mode="unpaired",
            inputs=["t1"],
            output="t2",
            data="phantom:0-1",
            arch_args=TINY,
            context=0,
            patch=32,
            batch=3,
            epochs=2,
            steps_per_epoch=2,
            disc_base=4,
            seed=3,
            pool_size=4,
            ema=0.9,
            disc_blur=1.0,
            cycle_blur=1.0,
        )

    straight = Trainer(cfg(), subjects=_grid(subjects, mods), val_subjects=[])
    straight.fit(tmp_path / "a", progress=False)
    assert len(straight.pool_b.images) == 4  # 12 synthesized images went through a pool of 4
    first = Trainer(cfg(), subjects=_grid(subjects, mods), val_subjects=[])
    first.fit(tmp_path / "b", progress=False, stop_after=1)
    resumed = Trainer(cfg(), subjects=_grid(subjects, mods), val_subjects=[])
    resumed.fit(tmp_path / "b", resume=True, progress=False)
    for net in ("G", "F", "DA", "DB", "G_ema"):
        for k, v in straight.nets[net].state_dict().items():
            assert torch.equal(v, resumed.nets[net].state_dict()[k]), (net, k)
    # the exported generator is the average, not the last step's weights
    assert resumed.generator is resumed.G_ema.module
    w_avg = dict(resumed.generator.named_parameters())
    differs = any(not torch.equal(p, w_avg[n]) for n, p in resumed.G.named_parameters())
    assert differs
    folder = export_bundle(resumed, tmp_path / "bundle", command="neurosynth train ...")
    card = json.loads((folder / "card.json").read_text())
    assert "moving average" in card["training"]["recipe"]["weights"]
    assert card["training"]["recipe"]["losses"]["image_pool"] == 4
    loaded = load_model(folder).network
    for k, v in resumed.generator.state_dict().items():
        assert torch.equal(v.cpu(), loaded.state_dict()[k]), k


def test_image_pool_returns_new_and_remembered_images():
    from napari_neurosynth.training import ImagePool

    pool = ImagePool(3, np.random.default_rng(0))
    first = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: passes through
    later = torch.full((200, 1, 1, 1), 100.0)
    out = pool.query(later).flatten()
    remembered = int((out < 100).sum())
    assert remembered == 3  # each of the 3 old images is handed back once, then replaced
    assert sorted(float(t) for t in pool.images[0].flatten()) == [100.0]
    assert ImagePool(0, np.random.default_rng(0)).query(first).data_ptr() == first.data_ptr()


def test_validation_and_exported_bundle_runs(subjects, phantom3, tmp_path):
    mods = ["t1", "t2_lowres", "t2"]
    cfg = TrainConfig(
        mode="mcsr",
        name="tiny_mcsr",
        inputs=["t1", "t2_lowres"],
        output="t2",
        data="phantom:0-1",
        architecture="mcsr",
        arch_args=TINY,
        context=1,
        patch=32,
        batch=2,
        epochs=1,
        steps_per_epoch=2,
        disc_base=4,
    )
    grid = _grid(subjects, mods)
    trainer = Trainer(cfg, subjects=grid[:1], val_subjects=grid[1:])
    history = trainer.fit(progress=False)
    assert {"val_psnr", "val_ssim", "val_mae"} <= set(history[0])
    assert np.isfinite(history[0]["val_psnr"])
    folder = export_bundle(trainer, tmp_path / "bundle", command="neurosynth train --mode mcsr ...")
    model = load_model(folder)
    card = model.card
    assert card["task"] == "mcsr" and card["inputs"] == ["t1", "t2_lowres"] and card["trained_on"] == "phantom"
    assert card["training"]["recipe"]["steps"] == 2 and "not for clinical use" in card["license"]
    # runs through the real engine on the acquired grids (t2_lowres is resampled by the engine)
    out = synthesize(model, [phantom3["t1"], phantom3["t2_lowres"]], device="cpu")
    assert out.shape == phantom3["t1"].shape and np.isfinite(out).all()


def test_cli_train_writes_bundle_with_heldout_table(tmp_path, capsys):
    out = tmp_path / "m"
    rc = cli_main(
        [
            "train",
            "--name",
            "cli_tiny",
            "--out",
            str(out),
            "--data",
            "phantom:0",
            "--val-data",
            "phantom:1",
            "--resolution",
            "3",
            "--epochs",
            "1",
            "--steps",
            "2",
            "--batch",
            "2",
            "--patch",
            "32",
            "--arch-args",
            "base=4,n_blocks=1",
            "--disc-base",
            "4",
            "--heldout",
            "1000",
            "--heldout-resolution",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0
    card = json.loads((out / "card.json").read_text())
    m = card["metrics"]
    assert m["seeds"] == [1000] and set(m["baselines"]) == {"input_standardised", "intensity_lut"}
    for row in (m["held_out"], *m["baselines"].values()):
        assert {"psnr_brain", "ssim_brain", "mae_brain", "nmse_brain", "psnr_lesion"} <= set(row)
    command = card["training"]["command"]
    assert command.startswith("neurosynth train ") and "--name cli_tiny" in command and "--heldout 1000" in command
    printed = capsys.readouterr().out
    assert "intensity_lut" in printed and "input_standardised" in printed
    # the reproduction command gives the card's numbers again
    rc = cli_main(["heldout", str(out), "--json"])
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and again["held_out"] == m["held_out"]
    assert again["baselines"] == m["baselines"]


def test_bad_training_options(subjects):
    with pytest.raises(NeurosynthError, match="unknown training mode"):
        Trainer(TrainConfig(mode="diffusion"), subjects=subjects, val_subjects=[])
    with pytest.raises(NeurosynthError, match="t2_lowres"):
        Trainer(TrainConfig(mode="mcsr", inputs=["t1"]), subjects=subjects, val_subjects=[])
    with pytest.raises(NeurosynthError, match="context 0"):
        Trainer(TrainConfig(mode="unpaired", context=1), subjects=subjects, val_subjects=[])
    assert cli_main(["train", "--name", "x", "--out", "/tmp/x", "--data", "/nonexistent/folder"]) == 2


def test_low_pass_removes_noise_but_keeps_contrast():
    """The unpaired recipe's low-pass: noise-scale texture is suppressed, tissue contrast is not."""
    from napari_neurosynth.losses import LowPass

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 1, 96, 96, generator=g)
    edge = torch.zeros(1, 1, 96, 96)
    edge[..., :, 48:] = 1.0  # a tissue boundary
    lp = LowPass(1.0)
    inner = (..., slice(8, -8), slice(8, -8))  # away from the zero-padded border
    # white noise through a Gaussian of sigma s keeps 1 / (2 s sqrt(pi)) of its std: 0.28 at 1 px
    assert float(lp(noise)[inner].std()) == pytest.approx(1 / (2 * np.sqrt(np.pi)), rel=0.1)
    smoothed = lp(edge)[inner]
    assert float(smoothed[..., :, :30].max()) < 1e-3 and float(smoothed[..., :, 60:].min()) > 0.999
    with pytest.raises(NeurosynthError, match="cannot be negative"):
        TrainConfig(mode="unpaired", context=0, disc_blur=-1).check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_exports_a_bundle_that_runs_on_cpu(subjects, tmp_path):
    mods = ["t1", "t2"]
    cfg = TrainConfig(
        mode="unpaired",
        inputs=["t1"],
        output="t2",
        data="phantom:0-1",
        arch_args=TINY,
        context=0,
        patch=32,
        batch=4,
        epochs=1,
        steps_per_epoch=12,
        lr=2e-3,
        disc_base=4,
        disc_blur=1.0,
        cycle_blur=1.0,
        seed=0,
        device="cuda",
    )
    trainer = Trainer(cfg, subjects=_grid(subjects, mods), val_subjects=[])
    assert next(trainer.G.parameters()).is_cuda and next(trainer.DB.parameters()).is_cuda
    x = torch.from_numpy(trainer.sampler_a.batch(4)[0])
    with torch.no_grad():
        trainer.G.eval()
        before = float((trainer.F(trainer.G(x.cuda())) - x.cuda()).abs().mean())
    trainer.G.train()
    trainer.fit(tmp_path / "ckpt", progress=False)
    with torch.no_grad():
        trainer.G.eval()
        after = float((trainer.F(trainer.G(x.cuda())) - x.cuda()).abs().mean())
        on_gpu = trainer.G(x.cuda()).cpu()
    assert after < before
    folder = export_bundle(trainer, tmp_path / "bundle", command="neurosynth train ...")
    model = load_model(folder)
    assert model.card["training"]["recipe"]["device"].startswith("cuda")
    with torch.no_grad():
        on_cpu = model.network.eval()(x)
    assert float((on_cpu - on_gpu).abs().max()) < 1e-3


def test_keep_best_exports_the_best_validation_epoch_and_survives_resume(subjects, tmp_path):
    mods = ["t1", "t2"]
    grid = _grid(subjects, mods)

    def cfg():
        return TrainConfig(
            mode="paired",
            inputs=["t1"],
            output="t2",
            data="phantom:0-1",
            arch_args=TINY,
            context=1,
            patch=32,
            batch=2,
            epochs=4,
            steps_per_epoch=3,
            lr=2e-2,
            disc_base=4,
            seed=3,
            keep_best=True,
        )  # a high rate: validation peaks before the end (epoch 3)

    straight = Trainer(cfg(), subjects=grid[:1], val_subjects=grid[1:])
    history = straight.fit(tmp_path / "a", progress=False)
    best_epoch = int(np.argmax([h["val_psnr"] for h in history])) + 1
    assert straight.best["epoch"] == best_epoch
    folder = export_bundle(straight, tmp_path / "bundle", command="neurosynth train ...")
    card = json.loads((folder / "card.json").read_text())
    assert f"from epoch {best_epoch} of 4" in card["training"]["recipe"]["weights"]
    exported = load_model(folder).network.state_dict()
    for k, v in straight.best["state"].items():
        assert torch.equal(v, exported[k]), k
    assert best_epoch < 4  # so the bundle must not be the last weights
    assert any(not torch.equal(v, exported[k]) for k, v in straight.G.state_dict().items())

    first = Trainer(cfg(), subjects=grid[:1], val_subjects=grid[1:])
    first.fit(tmp_path / "b", progress=False, stop_after=2)
    resumed = Trainer(cfg(), subjects=grid[:1], val_subjects=grid[1:])
    resumed.fit(tmp_path / "b", resume=True, progress=False)
    assert resumed.best["epoch"] == best_epoch
    for k, v in straight.best["state"].items():
        assert torch.equal(v, resumed.best["state"][k]), k

    with pytest.raises(NeurosynthError, match="needs validation data"):
        Trainer(cfg(), subjects=grid[:1], val_subjects=[])
