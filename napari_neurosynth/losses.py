"""Training losses for the generators, named after the survey's Tables 5 and 6.

Survey: "cross-modality neuroimage synthesis" (papers/), Table 5 (L_sgan, L_p2p,
L_cyc, L_iden) and Table 6 (L_gdl, L_edge). All functions take ``(B, C, H, W)``
tensors and return a scalar tensor (mean over elements), so they can be weighted
and summed directly; the ``nn.Module`` wrappers hold the weights for a recipe.

Examples
--------
>>> import torch
>>> x = torch.zeros(1, 1, 4, 4)
>>> float(l1_loss(x, x + 0.5))
0.5
>>> float(lsgan_generator_loss(torch.ones(1, 1, 2, 2)))
0.0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "STRUCTURE_LOSSES",
    "GeneratorLoss",
    "cycle_loss",
    "gradient_consistency_loss",
    "gradient_difference_loss",
    "identity_loss",
    "l1_loss",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "masked_l1_loss",
    "mind_descriptor",
    "mind_loss",
    "quantile_matching_loss",
]


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise L1 reconstruction loss, the survey's L_p2p / L_rec1 (Table 5).

    ``mean |target - prediction|``; pix2pix's term that captures low frequencies.

    Examples
    --------
    >>> float(l1_loss(torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]])))
    1.0
    """
    return F.l1_loss(prediction, target)


def masked_l1_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted L1: ``sum(w |y - G(x)|) / sum(w)``, e.g. to up-weight lesions (cf. L_tumor, Table 6).

    Examples
    --------
    >>> p, t = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 3.0]]]])
    >>> float(masked_l1_loss(p, t, torch.tensor([[[[1.0, 0.0]]]])))
    1.0
    """
    weight = weight.expand_as(prediction).to(prediction.dtype)
    return (weight * (prediction - target).abs()).sum() / weight.sum().clamp_min(1e-8)


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss for the discriminator (Mao et al. 2017; L_sgan, Table 5).

    ``0.5 * (mean((D(real) - 1)^2) + mean(D(fake)^2))``: real patches pushed to 1,
    synthesized ones to 0. Pass ``fake_scores`` computed on detached fakes.

    Examples
    --------
    >>> float(lsgan_discriminator_loss(torch.ones(4), torch.zeros(4)))
    0.0
    >>> float(lsgan_discriminator_loss(torch.zeros(4), torch.ones(4)))
    1.0
    """
    return 0.5 * (((real_scores - 1.0) ** 2).mean() + (fake_scores**2).mean())


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss for the generator (L_sgan, Table 5): ``mean((D(G(x)) - 1)^2)``.

    Examples
    --------
    >>> float(lsgan_generator_loss(torch.full((3,), 0.5)))
    0.25
    """
    return ((fake_scores - 1.0) ** 2).mean()


def cycle_loss(
    reconstructed_a: torch.Tensor,
    real_a: torch.Tensor,
    reconstructed_b: torch.Tensor | None = None,
    real_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cycle-consistency loss L_cyc (Table 5; CycleGAN, survey ref. [132]).

    ``mean|G_B(G_A(a)) - a| + mean|G_A(G_B(b)) - b|``; the second term is optional
    so one direction can be computed at a time.

    Examples
    --------
    >>> a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    >>> float(cycle_loss(a + 0.25, a)), float(cycle_loss(a + 0.25, a, b - 0.5, b))
    (0.25, 0.75)
    """
    loss = F.l1_loss(reconstructed_a, real_a)
    if reconstructed_b is not None and real_b is not None:
        loss = loss + F.l1_loss(reconstructed_b, real_b)
    return loss


class LowPass(nn.Module):
    """Gaussian low-pass of a ``(B, C, H, W)`` batch (MONAI's ``GaussianFilter``); ``sigma`` 0 is the identity.

    The unpaired recipe applies it before the discriminators and inside the
    cycle loss (``--disc-blur``, ``--cycle-blur``): on noisy MR both terms
    otherwise reward the generator for reproducing noise, which it can only
    paint (uncorrelated with the acquired noise) or hide in its output as a code
    for the way back (CycleGAN's "steganography", Chu et al. 2017). Above the
    noise scale, contrast and anatomy are unchanged, so the terms still judge them.

    Examples
    --------
    >>> x = torch.zeros(1, 1, 9, 9); x[..., 4, 4] = 1.0
    >>> y = LowPass(1.0)(x)
    >>> round(float(y.sum()), 3), float(y.max()) < 1.0
    (1.0, True)
    >>> LowPass(0.0)(x) is x
    True
    """

    def __init__(self, sigma: float = 0.0):
        super().__init__()
        self.sigma = float(sigma)
        self.filter: nn.Module | None = None
        if self.sigma > 0:
            from monai.networks.layers import GaussianFilter

            self.filter = GaussianFilter(2, self.sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.filter is None else self.filter(x)


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Identity loss L_iden (Table 5): ``mean|G_Y(y) - y|``, a generator fed its own
    target domain should leave it unchanged (preserves intensities).

    Only meaningful when the generator's input and output have the same number
    of channels (e.g. single-slice CycleGAN); for 2.5-D inputs pass the centre slice.

    Examples
    --------
    >>> y = torch.rand(2, 1, 4, 4)
    >>> float(identity_loss(y, y)), round(float(identity_loss(y + 0.1, y)), 4)
    (0.0, 0.1)
    """
    return F.l1_loss(same, real)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def gradient_difference_loss(prediction: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Gradient difference loss L_gdl / edge term L_edge (Table 6; Mathieu et al. 2016).

    ``mean(||dy(y)| - |dy(G(x))||^alpha) + mean(||dx(y)| - |dx(G(x))||^alpha)``
    with forward differences along height and width: penalises edges that are
    blurred, missing or invented, which L1 alone tolerates (the "inherent blurry
    effect" the survey cites). Zero for identical images, and for images that
    differ by a constant offset.

    Examples
    --------
    >>> a = torch.zeros(1, 1, 4, 4); a[..., 2:] = 1.0
    >>> float(gradient_difference_loss(a, a))
    0.0
    >>> b = torch.zeros(1, 1, 4, 4); b[..., 1:] = 1.0   # the edge moved one pixel
    >>> round(float(gradient_difference_loss(b, a)), 4)  # 8 of the 12 x-differences differ by 1
    0.6667
    """
    py, px = _gradients(prediction)
    ty, tx = _gradients(target)
    return ((ty.abs() - py.abs()).abs() ** alpha).mean() + ((tx.abs() - px.abs()).abs() ** alpha).mean()


class GeneratorLoss(nn.Module):
    """Weighted paired-generator objective: ``w_l1 L1 + w_gdl L_gdl + w_adv L_sgan``.

    pix2pix uses ``w_l1 = 100, w_adv = 1``; the adversarial term is added only
    when discriminator scores are passed. Returns the total and its parts (floats)
    for logging.

    Examples
    --------
    >>> loss = GeneratorLoss(l1=1.0, gdl=0.0, adversarial=0.0)
    >>> total, parts = loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    >>> float(total), parts["l1"]
    (1.0, 1.0)
    """

    def __init__(self, l1: float = 100.0, gdl: float = 10.0, adversarial: float = 1.0):
        super().__init__()
        self.weights = {"l1": l1, "gdl": gdl, "adversarial": adversarial}
        self._terms: dict[str, Callable[..., torch.Tensor]] = {"l1": l1_loss, "gdl": gradient_difference_loss}

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, fake_scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, torch.Tensor] = {}
        for key, fn in self._terms.items():
            if self.weights[key]:
                parts[key] = fn(prediction, target)
        if fake_scores is not None and self.weights["adversarial"]:
            parts["adversarial"] = lsgan_generator_loss(fake_scores)
        total = sum((self.weights[k] * v for k, v in parts.items()), prediction.new_zeros(()))
        return total, {k: float(v.detach()) for k, v in parts.items()}


# --------------------------------------------------------------------------- structure (unpaired)

#: The 2-D MIND neighbourhood: the four direct neighbours (the in-plane part of MIND's
#: 6-neighbourhood; the generators are slice models, so the through-plane pair is absent).
_MIND_OFFSETS = ((0, 1), (1, 0), (0, -1), (-1, 0))


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by ``(dy, dx)`` pixels with edge replication (no wrap-around at the border)."""
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    h, w = x.shape[-2:]
    padded = F.pad(x, pad, mode="replicate")
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[..., y0 : y0 + h, x0 : x0 + w]


def mind_descriptor(x: torch.Tensor, sigma: float = 0.8, eps: float = 1e-3) -> torch.Tensor:
    """MIND, the modality independent neighbourhood descriptor (Heinrich et al. 2012), in 2-D.

    For each neighbour offset ``r`` the patch distance ``D_r = G_sigma * (I - I(. + r))^2``
    (a Gaussian-weighted sum of squared differences), the local variance estimate
    ``V = mean_r D_r`` (clamped below at ``eps`` times its image mean, so flat
    background does not divide by zero) and ``MIND_r = exp(-D_r / V)``, divided by its
    maximum over ``r``. ``D_r`` and ``V`` scale alike under ``I -> a I + b``, so the
    descriptor is unchanged by any affine contrast change, *including an inversion*
    (``a < 0``): T1 and T2 describe the same anatomy with the same descriptor.
    MONAI has no MIND (it offers global and local mutual information, which made the
    generators copy their input here, see ``docs/models.md``), hence this small one.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, 1, H, W)`` images.
    sigma : float
        Gaussian patch scale in pixels.
    eps : float
        Relative floor of the variance estimate.

    Returns
    -------
    torch.Tensor
        ``(B, 4, H, W)`` descriptors in (0, 1].

    Examples
    --------
    >>> x = torch.rand(1, 1, 16, 16)
    >>> d = mind_descriptor(x)
    >>> d.shape, bool((d > 0).all() and (d <= 1).all())
    (torch.Size([1, 4, 16, 16]), True)
    >>> bool(torch.allclose(d, mind_descriptor(2.0 - 0.5 * x), atol=1e-5))  # inverted contrast
    True
    """
    from monai.networks.layers import GaussianFilter

    smooth = GaussianFilter(2, sigma).to(x.device)
    dist = torch.cat([smooth((x - _shift(x, dy, dx)) ** 2) for dy, dx in _MIND_OFFSETS], 1)
    var = dist.mean(1, keepdim=True)
    floor = eps * var.mean(dim=(1, 2, 3), keepdim=True) + 1e-12
    var = torch.maximum(var, floor)
    mind = torch.exp(-dist / var)
    return mind / mind.amax(1, keepdim=True)


def mind_loss(source: torch.Tensor, synthesized: torch.Tensor, sigma: float = 0.8) -> torch.Tensor:
    """Structure loss ``mean|MIND(source) - MIND(synthesized)|`` between a generator's input and output.

    The unpaired recipe's ``--structure mind`` (Heinrich et al. 2012; used as a
    structure constraint for unpaired synthesis by Yang et al. 2018): the
    adversarial term decides *what intensities* the output has, this term that
    its edges and self-similarities stay where the input's are, so the
    generator cannot invent or move anatomy, whatever contrast it picks.

    Examples
    --------
    >>> x = torch.rand(2, 1, 16, 16)
    >>> float(mind_loss(x, 1.0 - x)) < 1e-5                  # an inverted contrast costs nothing
    True
    >>> float(mind_loss(x, torch.roll(x, 2, -1))) > 0.05     # moved structure does
    True
    """
    return F.l1_loss(mind_descriptor(synthesized, sigma), mind_descriptor(source, sigma))


def gradient_consistency_loss(source: torch.Tensor, synthesized: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Structure loss ``1 - |GC|``, GC the normalised gradient correlation (Penney et al. 1998).

    ``GC = (NCC(dy a, dy b) + NCC(dx a, dx b)) / 2`` per image, the normalised
    cross-correlation of the forward differences; its absolute value is used
    because T1 -> T2 inverts the contrast, which negates every gradient. Zero when
    the output is any affine function of the input, positive when edges move,
    appear or vanish. (``--structure gc``; cheaper than MIND, but global per patch.)

    Examples
    --------
    >>> x = torch.rand(2, 1, 16, 16)
    >>> float(gradient_consistency_loss(x, 3.0 - 2.0 * x)) < 1e-5
    True
    >>> float(gradient_consistency_loss(x, torch.roll(x, 2, -1))) > 0.5
    True
    """

    def ncc(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        p = p.flatten(1) - p.flatten(1).mean(1, keepdim=True)
        q = q.flatten(1) - q.flatten(1).mean(1, keepdim=True)
        return (p * q).sum(1) / (p.norm(dim=1) * q.norm(dim=1) + eps)

    ay, ax = _gradients(source)
    by, bx = _gradients(synthesized)
    return (1.0 - 0.5 * (ncc(ay, by) + ncc(ax, bx)).abs()).mean()


#: ``--structure`` choices of the unpaired recipe.
STRUCTURE_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mind": mind_loss,
    "gc": gradient_consistency_loss,
}


def quantile_matching_loss(
    synthesized: torch.Tensor,
    real: torch.Tensor,
    synthesized_mask: torch.Tensor | None = None,
    real_mask: torch.Tensor | None = None,
    levels: int = 128,
) -> torch.Tensor:
    """1-D Wasserstein-1 distance between two intensity distributions: ``mean_q |Q_s(q) - Q_r(q)|``.

    ``Q`` are the quantile functions (``levels`` levels, :func:`torch.quantile`,
    differentiable) of the synthesized and of *unrelated* real target voxels (another
    subject's patches), each inside its mask when given (falling back to all voxels
    when a mask is empty). The unpaired recipe's ``--lambda-intensity``: the PatchGAN
    discriminator instance-normalises after its first layer, so it hardly sees a
    global offset or scale of the intensities; this term does, and only that (it is
    blind to where voxels are, which the structure term keeps).

    Examples
    --------
    >>> x = torch.rand(2, 1, 8, 8)
    >>> float(quantile_matching_loss(x, torch.flip(x, (0, 3)))) < 1e-6   # same values, other places
    True
    >>> round(float(quantile_matching_loss(x + 0.5, x)), 4)
    0.5
    """

    def values(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        if m is not None:
            sel = m.to(torch.bool)
            if bool(sel.any()):
                return x[sel].float()
        return x.flatten().float()

    q = torch.linspace(0.0, 1.0, levels, device=synthesized.device)
    return (
        (torch.quantile(values(synthesized, synthesized_mask), q) - torch.quantile(values(real, real_mask), q))
        .abs()
        .mean()
    )
