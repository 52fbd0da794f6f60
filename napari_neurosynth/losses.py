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
    "GeneratorLoss",
    "cycle_loss",
    "gradient_difference_loss",
    "identity_loss",
    "l1_loss",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "masked_l1_loss",
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
