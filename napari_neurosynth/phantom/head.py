"""The head outside the brain: CSF rim, skull (inner table, diploe, outer table), temporalis, scalp fat, skin.

The template is skull-stripped, so the head is modelled as layers stacked on a
smoothed hull of the brain.  Each layer's thickness varies smoothly over the
head (its own low-order random cosine field per subject), so the skull is not a
set of fixed-depth rings: the diploe thins over the temporal squama, the
temporalis muscle bulges over the temporal fossa, the scalp fat varies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .anatomy import normal_width
from .template import Deformation, Grid, dct_field, sample_head_distance, unit_coeffs

# Layers from the brain hull outwards: tissue, thickness range (mm) over the head.  Adult
# calvarial thickness is ~5-8 mm, thinnest over the temporal squama (Lynnerup N, Forensic
# Sci Int 2001;117:45-51); cortical tables ~1-2.5 mm around a fatty diploe; scalp ~5-8 mm,
# mostly subcutaneous fat.  ``None``: the temporalis muscle, present only over the temporal
# fossa (``_TEMPORALIS_MM``).
LAYERS: tuple[tuple[str, tuple[float, float] | None], ...] = (
    ("csf", (1.0, 3.0)),  # extra-axial CSF beyond the hull
    ("bone", (1.0, 2.2)),  # inner table
    ("marrow", (1.0, 4.5)),  # diploe (fatty marrow)
    ("bone", (1.0, 2.2)),  # outer table
    ("muscle", None),  # temporalis
    ("fat", (2.0, 6.0)),  # subcutaneous fat
    ("skin", (1.2, 2.5)),
)
# Peak temporalis thickness (mm), drawn per subject; adults ~ 5-15 mm on MRI.
_TEMPORALIS_MM = (6.0, 12.0)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def temporal_fossa(axes: list[np.ndarray]) -> list[np.ndarray]:
    """Separable weight (0-1) of the temporal fossa: lateral, above the zygoma, between brow and ear.

    Returns one factor per axis; their outer product is the weight.

    Examples
    --------
    >>> x, y, z = temporal_fossa([np.array([0.0, 70.0]), np.array([-5.0]), np.array([5.0])])
    >>> (x * y * z).round(2).tolist()
    [0.0, 1.0]
    """
    x, y, z = axes
    lateral = _smoothstep((np.abs(x) - 40.0) / 25.0)
    along = np.exp(-(((y + 5.0) / 32.0) ** 2))
    height = np.exp(-(((z - 5.0) / 30.0) ** 2))
    return [lateral.astype(np.float32), along.astype(np.float32), height.astype(np.float32)]


def _thickness_fields(rng: np.random.Generator | None):
    """The subject's layer thicknesses before the temporal-fossa terms: a function of grid axes -> dict."""
    coeffs = [None if rng is None or span is None else unit_coeffs(rng, 3) for _, span in LAYERS]

    def fields(axes):
        shape = tuple(len(a) for a in axes)
        out = {}
        for k, ((_, span), c) in enumerate(zip(LAYERS, coeffs)):
            if span is not None:
                lo, hi = span
                f = np.zeros(shape, np.float32) if c is None else dct_field(axes, c)
                out[f"t{k}"] = (lo + (hi - lo) * (0.5 + 0.5 * f)).astype(np.float32)
        return out

    return fields


def add_head(
    clean: dict[str, np.ndarray],
    grid: Grid,
    deformation: Deformation,
    rng: np.random.Generator | None,
    nonbrain: np.ndarray,
    signal: Callable[[str], np.ndarray],
) -> None:
    """Add the layers' signals to ``clean`` (one array per contrast) where ``nonbrain`` leaves room.

    ``signal(tissue)`` gives the tissue's signed signal per contrast (in the order
    of ``clean``).  Only voxels with room left that lie within reach of the
    thickest head are computed (a flat index set), which skips the brain and the
    air.  The thickness fields vary over many centimetres (< 0.15 mm per mm), so
    their nearest ~3 mm sample is used; the distance to the hull is interpolated
    linearly.
    """
    temporalis = float(np.mean(_TEMPORALIS_MM)) if rng is None else float(rng.uniform(*_TEMPORALIS_MM))
    get, coarse, factors = sample_head_distance(grid, deformation, extra=_thickness_fields(rng))
    d = get("sd")
    w_full = None if grid.isotropic else normal_width(d, grid.spacing)
    reach = sum(float(coarse[f"t{k}"].max()) for k, (_, span) in enumerate(LAYERS) if span is not None)
    reach += temporalis + max(grid.spacing)
    band = nonbrain > 1e-4
    band &= d < reach
    idx = np.flatnonzero(band)
    del band
    d_b = d.ravel()[idx]
    room = nonbrain.ravel()[idx]
    w = float(grid.spacing[0]) if w_full is None else w_full.ravel()[idx]
    del d, w_full
    ijk = np.unravel_index(idx, grid.shape)
    fx, fy, fz = temporal_fossa(grid.axes())
    fossa = fx[ijk[0]] * fy[ijk[1]] * fz[ijk[2]]
    cshape = coarse["t0"].shape
    nearest = np.ravel_multi_index(
        tuple(np.minimum((i + f // 2) // f, c - 1) for i, f, c in zip(ijk, factors, cshape)), cshape
    )
    del ijk
    acc = np.zeros((len(clean), idx.size), np.float32)
    inner = np.ones(idx.size, np.float32)
    edge = np.zeros(idx.size, np.float32)
    for k, (tissue, span) in enumerate(LAYERS):
        if span is None:
            thick = temporalis * fossa
        else:
            thick = coarse[f"t{k}"].ravel()[nearest]
            if tissue == "marrow":
                thick = thick * (1.0 - 0.7 * fossa)  # the thin temporal squama
        edge += thick
        outer = np.clip((d_b - edge) / w + 0.5, 0.0, 1.0).astype(np.float32)
        layer = (inner - outer) * room
        acc += signal(tissue)[:, None].astype(np.float32) * layer[None, :]
        inner = outer
    for i, img in enumerate(clean.values()):
        flat = img.reshape(-1)
        flat[idx] += acc[i]
