"""Generators, discriminator and losses: shapes, JSON args, trainability, MCSR alignment."""

from __future__ import annotations

import json

import pytest
import torch

from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.losses import (
    GeneratorLoss,
    cycle_loss,
    gradient_difference_loss,
    identity_loss,
    l1_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    masked_l1_loss,
)
from napari_neurosynth.networks import (
    GENERATORS,
    DeformableAlign,
    build_network,
    count_parameters,
    warp,
)

# Tiny configurations, written as JSON as they would be in a card.
TINY = {
    "resnet": '{"in_channels": 3, "base": 4, "n_blocks": 1}',
    "unet": '{"in_channels": 3, "base": 4, "depth": 2}',
    "fusion": '{"n_inputs": 3, "channels_per_input": 1, "base": 4, "n_blocks": 1}',
    "mcsr": '{"source_channels": 2, "lowres_channels": 1, "base": 4, "n_blocks": 2}',
    "fgdl": '{"source_channels": 2, "lowres_channels": 1, "base": 4, "n_blocks": 1}',
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_shapes_and_attributes(name):
    args = json.loads(TINY[name])
    net = build_network(name, **args)
    assert net.in_channels == 3
    assert net.architecture["name"] == name
    # the record is JSON and rebuilds an identical architecture
    rebuilt = build_network(name, **json.loads(json.dumps(net.architecture["args"])))
    assert count_parameters(rebuilt) == count_parameters(net)
    d = net.size_divisor
    x = torch.randn(2, 3, 4 * d, 3 * d)
    assert net(x).shape == (2, 1, 4 * d, 3 * d)
    modules = dict(net.named_modules())
    assert net.default_cam_layer in modules
    # the Grad-CAM layer yields a plain tensor
    seen = []
    handle = modules[net.default_cam_layer].register_forward_hook(lambda m, i, o: seen.append(o))
    net(x)
    handle.remove()
    assert isinstance(seen[0], torch.Tensor) and seen[0].ndim == 4


def test_default_sizes_are_cpu_friendly():
    """Defaults at 2.5-D (3 slices per input) stay under a million parameters (a few MB of float32)."""
    for name, args in {
        "resnet": {"in_channels": 3},
        "unet": {"in_channels": 3},
        "fusion": {"n_inputs": 2, "channels_per_input": 3},
        "mcsr": {"source_channels": 3, "lowres_channels": 3},
    }.items():
        n = count_parameters(build_network(name, **args))
        assert 50_000 < n < 1_000_000, (name, n)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_is_trainable(name):
    """A few Adam steps on one fixed random pair lower the L1 loss."""
    net = build_network(name, **json.loads(TINY[name]))
    x = torch.rand(2, 3, 16, 16)
    y = x[:, :1] * 0.5 + torch.roll(x[:, 1:2], 1, dims=-1) * 0.3
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = l1_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_patchgan_scores_patches_and_learns():
    d = build_network("patchgan", in_channels=2, base=4)
    assert d(torch.zeros(1, 2, 64, 64)).shape == (1, 1, 6, 6)
    real, fake = torch.rand(2, 2, 32, 32), torch.rand(2, 2, 32, 32) * 0.2
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    first = None
    for _ in range(10):
        opt.zero_grad()
        loss = lsgan_discriminator_loss(d(real), d(fake))
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    with torch.no_grad():
        assert float(lsgan_discriminator_loss(d(real), d(fake))) < first


def test_build_network_errors():
    with pytest.raises(NeurosynthError, match=r"unknown architecture 'vnet'.*resnet, unet, fusion, mcsr"):
        build_network("vnet")
    with pytest.raises(NeurosynthError, match=r"does not take argument.*depth"):
        build_network("resnet", depth=3)
    with pytest.raises(NeurosynthError, match="positive integer"):
        build_network("unet", in_channels=1, depth=0)
    with pytest.raises(NeurosynthError, match="fusion mode"):
        build_network("fusion", fusion="product")


def test_fusion_modes_all_work():
    x = torch.rand(1, 4, 8, 8)
    for mode in ("hybrid", "concat", "mean", "max"):
        net = build_network("fusion", n_inputs=2, channels_per_input=2, base=4, n_blocks=1, fusion=mode)
        assert net(x).shape == (1, 1, 8, 8)


def test_fusion_inputs_are_encoded_separately():
    """Changing one input group changes only what its own encoder sees."""
    net = build_network("fusion", n_inputs=2, channels_per_input=1, base=4, n_blocks=1).eval()
    x = torch.rand(1, 2, 8, 8)
    seen = {}
    net.encoders[0].register_forward_hook(lambda m, i, o: seen.__setitem__(0, o[0].clone()))
    net.encoders[1].register_forward_hook(lambda m, i, o: seen.__setitem__(1, o[0].clone()))
    net(x)
    before = dict(seen)
    x2 = x.clone()
    x2[:, 1] += 1.0
    net(x2)
    assert torch.equal(before[0], seen[0])
    assert not torch.allclose(before[1], seen[1])


# --------------------------------------------------------------------------- MCSR


def test_warp_zero_offset_is_identity_and_integer_offset_shifts():
    f = torch.rand(2, 3, 6, 7)
    assert torch.allclose(warp(f, torch.zeros(2, 2, 6, 7)), f, atol=1e-6)
    shift = torch.zeros(2, 2, 6, 7)
    shift[:, 0] = 1.0  # sample one pixel to the right
    out = warp(f, shift)
    assert torch.allclose(out[..., :-1], f[..., 1:], atol=1e-5)


def test_deformable_align_starts_as_identity():
    align = DeformableAlign(channels=8, offset_groups=2)
    ref, mov = torch.rand(1, 8, 5, 5), torch.rand(1, 8, 5, 5)
    aligned, offset = align(ref, mov)
    assert offset.shape == (1, 4, 5, 5) and float(offset.detach().abs().max()) == 0.0
    assert torch.allclose(aligned, mov, atol=1e-6)
    # explicit zero offsets through the module's warp are also the identity, per group
    from napari_neurosynth.networks import warp_groups

    assert torch.allclose(warp_groups(mov, torch.zeros(1, 4, 5, 5)), mov, atol=1e-6)


def _blobs(n: int, size: int = 24) -> torch.Tensor:
    """Smooth random images (three Gaussian blobs each), 4 identical feature channels."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    imgs = []
    for _ in range(n):
        img = torch.zeros(size, size)
        for cy, cx in torch.rand(3, 2) * (size - 8) + 4:
            img += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        imgs.append(img)
    return torch.stack(imgs)[:, None].repeat(1, 4, 1, 1)


def test_deformable_align_learns_a_misregistration():
    """Trained on pairs displaced by 1.5 px, the offsets recover the shift and the error drops."""
    align = DeformableAlign(channels=4)
    opt = torch.optim.Adam(align.parameters(), lr=1e-2)
    shift = torch.zeros(4, 2, 24, 24)
    shift[:, 0] = 1.5
    inner = (..., slice(3, -3), slice(3, -3))  # border pixels have nothing to sample from
    for _ in range(120):
        ref = _blobs(4)
        aligned, _ = align(ref, warp(ref, -shift))
        loss = (aligned - ref)[inner].abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref = _blobs(4)
    moving = warp(ref, -shift)
    with torch.no_grad():
        aligned, offset = align(ref, moving)
    before = float((moving - ref)[inner].abs().mean())
    after = float((aligned - ref)[inner].abs().mean())
    assert after < 0.3 * before, (before, after)
    assert 1.0 < float(offset[:, 0][inner].median()) < 2.0
    assert abs(float(offset[:, 1][inner].median())) < 0.5


def test_mcsr_gradients_reach_sr_branch_and_offsets():
    net = build_network("mcsr", **json.loads(TINY["mcsr"]))
    x = torch.rand(2, 3, 16, 16)
    target = x[:, 2:3]  # the low-resolution channel carries the answer
    loss = l1_loss(net(x), target)
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    sr = [g for n, g in grads.items() if n.startswith("sr_encoder.")]
    assert sr and all(g is not None for g in sr)
    assert sum(float(g.abs().sum()) for g in sr) > 0
    # the offset predictor's last conv starts at zero but receives a gradient
    assert float(net.align.offset_net[-1].weight.grad.abs().sum()) > 0


def test_mcsr_uses_lowres_channels():
    net = build_network("mcsr", **json.loads(TINY["mcsr"])).eval()
    x = torch.rand(1, 3, 16, 16)
    x2 = x.clone()
    x2[:, 2] = 0.0
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x2))


# --------------------------------------------------------------------------- losses


def test_l1_and_masked_l1():
    a, b = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert float(l1_loss(a, b)) == pytest.approx(2.5)
    mask = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    assert float(masked_l1_loss(a, b, mask)) == pytest.approx(3.5)


def test_gradient_difference_loss():
    img = torch.zeros(1, 1, 8, 8)
    img[..., 4:] = 1.0
    assert float(gradient_difference_loss(img, img)) == 0.0
    assert float(gradient_difference_loss(img + 0.3, img)) == pytest.approx(0.0, abs=1e-7)  # offset-invariant
    shifted = torch.roll(img, 1, dims=-1)
    shifted[..., 0] = 0.0
    # edge moved by one pixel: 2 of 7 x-differences per row differ by 1
    assert float(gradient_difference_loss(shifted, img)) == pytest.approx(2 / 7)
    blurred = img.clone()
    blurred[..., 4] = 0.5
    assert 0 < float(gradient_difference_loss(blurred, img)) < float(gradient_difference_loss(shifted, img))


def test_lsgan_values():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert float(lsgan_discriminator_loss(ones, zeros)) == 0.0  # perfect discriminator
    assert float(lsgan_discriminator_loss(zeros, ones)) == pytest.approx(1.0)
    assert float(lsgan_discriminator_loss(ones * 0.5, ones * 0.5)) == pytest.approx(0.25)
    assert float(lsgan_generator_loss(ones)) == 0.0  # fools D
    assert float(lsgan_generator_loss(zeros)) == pytest.approx(1.0)
    assert float(lsgan_generator_loss(torch.full((4,), 0.5))) == pytest.approx(0.25)


def test_cycle_and_identity():
    a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    assert float(cycle_loss(a + 0.5, a)) == pytest.approx(0.5)
    assert float(cycle_loss(a + 0.5, a, b - 0.25, b)) == pytest.approx(0.75)
    assert float(identity_loss(b, b)) == 0.0


def test_generator_loss_combines_weighted_terms():
    loss = GeneratorLoss(l1=2.0, gdl=1.0, adversarial=0.5)
    pred, target = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    total, parts = loss(pred, target, fake_scores=torch.zeros(1, 1, 2, 2))
    assert parts == {"l1": 1.0, "gdl": 0.0, "adversarial": 1.0}
    assert float(total) == pytest.approx(2.0 * 1.0 + 0.5 * 1.0)


@pytest.mark.parametrize("name", GENERATORS)
def test_batched_equals_per_slice(name):
    """Instance norm is per sample, so the engine may batch slices without changing results."""
    net = build_network(name, **json.loads(TINY[name])).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        batched = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_mcsr_runs_under_reduced_precision_autocast():
    """The engine uses mixed precision on GPU; the warp keeps its sampling grid in float32."""
    net = build_network("mcsr", **json.loads(TINY["mcsr"])).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert float((low.float() - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 0.05


@pytest.mark.parametrize("n_down", [0, 1])
def test_resnet_with_a_shallower_trunk_keeps_the_contract(n_down, make_bundle):
    """``n_downsampling`` < 2: odd sizes pass when the divisor allows, the card rebuilds it, bundles run."""
    import numpy as np

    from napari_neurosynth.inference import reference_synthesize, synthesize
    from napari_neurosynth.io import Volume

    net = build_network("resnet", in_channels=1, base=4, n_blocks=1, n_downsampling=n_down).eval()
    assert net.size_divisor == 2**n_down
    assert net(torch.rand(1, 1, 6 * net.size_divisor + (1 - n_down) * 1, 10)).shape[-1] == 10
    classic = build_network("resnet", in_channels=1, base=4, n_blocks=1)
    assert "n_downsampling" not in classic.architecture["args"]  # existing cards unchanged
    model = make_bundle(name="shallow", context=0, network=net, load=True)
    assert model.network.size_divisor == 2**n_down
    rng = np.random.default_rng(0)
    vol = Volume(rng.random((13, 11, 5)).astype(np.float32) + 0.1, np.diag([2.0, 2.0, 3.0, 1.0]))
    engine = synthesize(model, vol, device="cpu", crop=False)
    assert np.abs(np.asarray(engine) - np.asarray(reference_synthesize(model, vol))).max() < 1e-4
    with pytest.raises(NeurosynthError, match="non-negative integer"):
        build_network("resnet", n_downsampling=-1)
