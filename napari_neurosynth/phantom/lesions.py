"""Lesions: kinds and labels, their conspicuity per contrast, placement and shapes.

Lesions live in subject millimetres: they are placed on a fixed 3 mm working copy
of the deformed anatomy (so one seed is the same subject at every resolution) and
rendered as blobby solids with partial-volume edges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import NeurosynthError
from .anatomy import pv_occupancy
from .physics import make_protocol, tissue_signal
from .template import Deformation, Grid, sample_brain, template_grid

#: Lesion kinds accepted by ``make_phantom(lesions=[...])`` (aliases in ``_KIND_ALIASES``).
LESION_KINDS = ("tumour", "plaque", "black_hole", "haemorrhage")
_KIND_ALIASES = {
    "tumour": "tumour",
    "tumor": "tumour",
    "tumours": "tumour",
    "tumors": "tumour",
    "glioma": "tumour",
    "oedema": "tumour",
    "edema": "tumour",
    "plaque": "plaque",
    "plaques": "plaque",
    "ms": "plaque",
    "black_hole": "black_hole",
    "black hole": "black_hole",
    "black-hole": "black_hole",
    "blackhole": "black_hole",
    "black_holes": "black_hole",
    "black holes": "black_hole",
    "haemorrhage": "haemorrhage",
    "hemorrhage": "haemorrhage",
    "haematoma": "haemorrhage",
    "hematoma": "haemorrhage",
    "blood": "haemorrhage",
    "bleed": "haemorrhage",
}
#: Label values of ``lesion_mask`` and their names.
LESION_LABELS = {1: "tumour core", 2: "oedema", 3: "plaque", 4: "black hole", 5: "haemorrhage"}
#: Label -> key of :data:`LESION_VISIBILITY` (the label's name, snake_case).
LESION_LABEL_KINDS = {label: name.replace(" ", "_") for label, name in LESION_LABELS.items()}
#: ``lesions=`` kind -> the labels it produces.
LESION_KIND_LABELS = {"tumour": (1, 2), "plaque": (3,), "black_hole": (4,), "haemorrhage": (5,)}
# Tissue (relaxation values) that decides each label's conspicuity.
_LABEL_TISSUE = {
    "tumour_core": "tumour",
    "oedema": "oedema",
    "plaque": "plaque",
    "black_hole": "black_hole",
    "haemorrhage": "haemorrhage",
}
#: |relative contrast to white matter| below which a lesion is "invisible" on a contrast.
VISIBILITY_THRESHOLD = 0.10


def lesion_contrast(field_strength: float = 3.0, protocol: Any = None) -> dict[str, dict[str, float]]:
    """Relative contrast of each lesion label against normal white matter, per contrast.

    ``S_lesion / S_WM - 1`` of the pure tissues' signals (no partial volume, noise or
    bias) for the given field strength and protocol (see :func:`make_protocol`).

    Examples
    --------
    >>> c = lesion_contrast()
    >>> abs(c["plaque"]["t1"]) < 0.05 < c["plaque"]["t2"]  # the T1-invisible plaque
    True
    >>> c["black_hole"]["t1"] < 0 < c["haemorrhage"]["t1"]
    True
    """
    seqs = make_protocol(protocol, np.random.default_rng(0), field_strength)
    out = {}
    for kind, tissue in _LABEL_TISSUE.items():
        row = {}
        for contrast, seq in seqs.items():
            ref = abs(tissue_signal("wm", seq, field_strength))
            row[contrast] = round(abs(tissue_signal(tissue, seq, field_strength)) / ref - 1.0, 4)
        out[kind] = row
    return out


def lesion_visibility(
    field_strength: float = 3.0, protocol: Any = None, threshold: float = VISIBILITY_THRESHOLD
) -> dict[str, dict[str, str]]:
    """Conspicuity of each lesion label per contrast: ``"bright"``, ``"dark"`` or ``"invisible"``.

    A lesion is invisible on a contrast when its signal is within ``threshold``
    (10 %) of normal white matter's; keys are :data:`LESION_LABEL_KINDS` values.

    Examples
    --------
    >>> lesion_visibility()["plaque"]
    {'t1': 'invisible', 't2': 'bright', 'pd': 'bright', 'flair': 'bright'}
    >>> lesion_visibility()["haemorrhage"]["t1"], lesion_visibility()["black_hole"]["t1"]
    ('bright', 'dark')
    """
    table = lesion_contrast(field_strength, protocol)
    return {
        kind: {c: ("invisible" if abs(v) < threshold else "bright" if v > 0 else "dark") for c, v in row.items()}
        for kind, row in table.items()
    }


#: Conspicuity per lesion label and contrast at 3 T with the default protocol (see
#: :func:`lesion_visibility` for other field strengths and protocols; each phantom's
#: ``lesion_mask.metadata["visibility"]`` holds its own).
LESION_VISIBILITY: dict[str, dict[str, str]] = lesion_visibility()


def parse_lesions(lesions: bool | str | Iterable[str] | None) -> tuple[str, ...]:
    """The lesion kinds asked for, in canonical order.

    Examples
    --------
    >>> parse_lesions(True)
    ('tumour', 'plaque', 'black_hole', 'haemorrhage')
    >>> parse_lesions("ms, blood")
    ('plaque', 'haemorrhage')
    """
    if lesions is True:
        return LESION_KINDS
    if lesions is False or lesions is None:
        return ()
    if isinstance(lesions, str):
        lesions = [s for s in lesions.replace(";", ",").split(",") if s.strip()]
    try:
        items = list(lesions)
    except TypeError:
        raise NeurosynthError(
            f"lesions must be True, False or a list of kinds from {', '.join(LESION_KINDS)}; got {lesions!r}"
        ) from None
    kinds = []
    for item in items:
        key = str(item).strip().lower()
        if key not in _KIND_ALIASES:
            raise NeurosynthError(f"unknown lesion kind {item!r}; choose from {', '.join(LESION_KINDS)}")
        if _KIND_ALIASES[key] not in kinds:
            kinds.append(_KIND_ALIASES[key])
    return tuple(k for k in LESION_KINDS if k in kinds)


# --------------------------------------------------------------------------------------
# Blobs
# --------------------------------------------------------------------------------------


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotation_to(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose first column is ``direction`` (random roll about it)."""
    d = direction / (np.linalg.norm(direction) or 1.0)
    helper = _random_rotation(rng)[:, 0]
    e2 = helper - d * (helper @ d)
    e2 /= np.linalg.norm(e2) or 1.0
    return np.stack([d, e2, np.cross(d, e2)], axis=1)


@dataclass
class Blob:
    """A smooth blobby solid: soft union of ellipsoids with a wavy surface."""

    centre: np.ndarray  # world mm
    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (offset mm, radii mm, rotation)
    waves: list[tuple[np.ndarray, float, float]]  # (wave vector rad/mm, phase, amplitude mm)

    @property
    def extent(self) -> float:
        reach = max(np.linalg.norm(o) + r.max() for o, r, _ in self.lobes)
        return reach + sum(abs(a) for _, _, a in self.waves)

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, < 0 inside) at world points ``pts`` (..., 3)."""
        dists = []
        for offset, radii, rot in self.lobes:
            local = (pts - (self.centre + offset)) @ rot / radii
            dists.append((np.linalg.norm(local, axis=-1) - 1.0) * radii.min())
        d = dists[0]
        k = 0.3 * min(r.min() for _, r, _ in self.lobes)
        for other in dists[1:]:  # polynomial smooth minimum: blobby union
            h = np.clip(0.5 + 0.5 * (other - d) / k, 0.0, 1.0)
            d = other * (1 - h) + d * h - k * h * (1 - h)
        for vec, phase, amp in self.waves:
            d = d + amp * np.sin(pts @ vec + phase)
        return d


def make_blob(rng, centre, radius, n_lobes, elongation=(1.0, 1.0), rotation=None, roughness=0.12) -> Blob:
    lobes = []
    for i in range(n_lobes):
        radii = radius * np.array([rng.uniform(*elongation) if j == 0 else rng.uniform(0.7, 1.0) for j in range(3)])
        offset = np.zeros(3) if i == 0 else rng.normal(0, 0.35 * radius, 3)
        if i > 0:
            radii = radii * rng.uniform(0.5, 0.85)
        rot = rotation if (rotation is not None and i == 0) else _random_rotation(rng)
        lobes.append((offset, radii, rot))
    waves = []
    for _ in range(3):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        wavelength = radius * rng.uniform(0.8, 1.6)
        waves.append((direction * 2 * np.pi / wavelength, rng.uniform(0, 2 * np.pi), roughness * radius / 3))
    return Blob(np.asarray(centre, float), lobes, waves)


def blob_region(blob: Blob, grid: Grid, grow: float = 0.0, scale_waves: float = 1.0):
    """Index region of ``grid`` that holds ``blob`` dilated by ``grow`` mm (None when outside)."""
    reach = blob.extent + grow * (1 + scale_waves) + 2 * max(grid.spacing)
    return grid.region(blob.centre - reach, blob.centre + reach)


def render_blob(blob: Blob, grid: Grid, region, grow: float = 0.0, scale_waves: float = 1.0) -> np.ndarray:
    """Partial-volume occupancy of ``blob`` (dilated by ``grow`` mm) on ``region`` of ``grid``."""
    axes = grid.axes(region)
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    d = blob.distance(pts) - grow
    if grow and scale_waves:
        # Oedema spreads irregularly (finger-like along the white matter).
        for vec, phase, amp in [(v * 0.6, p + 1.0, a * 4.0 * scale_waves) for v, p, a in blob.waves]:
            d = d + amp * np.sin(pts @ vec + phase)
    return pv_occupancy(d.astype(np.float32), grid.spacing)


# --------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------


def _round(v) -> list[float]:
    return [round(float(x), 1) for x in v]


@dataclass
class Placement:
    """Lesion geometry of one subject (world mm) and its description for the metadata."""

    tumour: dict | None
    haemorrhage: Blob | None
    plaques: list[Blob]
    black_holes: list[Blob]
    placed: list[dict]


def place_lesions(
    rngs: dict[str, np.random.Generator], kinds: tuple[str, ...], deformation: Deformation, min_radius: float
) -> Placement:
    """Choose lesion geometry (world mm) on a fixed 3 mm working grid.

    Placement does not depend on the output grid, so one seed gives the same
    subject at every resolution; ``min_radius`` (mm) keeps small lesions several
    voxels wide on coarse grids.
    """
    if not kinds:
        return Placement(None, None, [], [], [])
    grid = template_grid((3.0, 3.0, 3.0))
    region, maps = sample_brain(grid, deformation)
    wm, gm, csf = (np.zeros(grid.shape, np.float32) for _ in range(3))
    if region is not None:
        wm[region], gm[region], csf[region] = maps["wm"], maps["gm"], maps["csf"]
    brain = (wm + gm + csf) > 0.5
    axes = grid.axes()
    zz = axes[2][None, None, :]
    xx = axes[0][:, None, None]
    wm_depth = ndi.distance_transform_edt(wm > 0.5) * 3.0
    brain_depth = ndi.distance_transform_edt(brain) * 3.0
    ventricles = (csf > 0.5) & (brain_depth > 15.0)
    vent_dist = ndi.distance_transform_edt(~ventricles) * 3.0
    cerebrum = (zz > -5.0) & (zz < 60.0)
    aff = grid.affine

    def world(idx):
        return aff[:3, :3] @ np.asarray(idx, float) + aff[:3, 3]

    placed: list[dict] = []
    taken: list[tuple[np.ndarray, float]] = []  # (centre, reach in mm) of the lesions placed so far

    def free(centre, radius):
        """Whether a lesion of ``radius`` at ``centre`` keeps clear of the others."""
        return all(np.linalg.norm(centre - c) >= reach + 1.5 * radius for c, reach in taken)

    tumour = None
    if "tumour" in kinds:
        rng = rngs["tumour"]
        radius = rng.uniform(7.0, 13.0)
        oedema = rng.uniform(5.0, 11.0)
        cand = (wm > 0.8) & cerebrum & (np.abs(xx) > 18.0)
        depth_ok = cand & (wm_depth >= np.percentile(wm_depth[cand], 80))
        idx = np.argwhere(depth_ok if depth_ok.any() else cand)
        centre = world(idx[rng.integers(len(idx))]) + rng.uniform(-1.5, 1.5, 3)
        blob = make_blob(rng, centre, radius, n_lobes=int(rng.integers(2, 5)), elongation=(1.0, 1.3))
        necrotic = bool(rng.random() < 0.6)
        tumour = {"blob": blob, "oedema_mm": oedema, "necrotic": necrotic}
        taken.append((centre, blob.extent + 2 * oedema + 10.0))
        placed.append(
            {
                "kind": "tumour",
                "centre_mm": _round(centre),
                "radius_mm": round(float(radius), 1),
                "oedema_mm": round(float(oedema), 1),
                "necrotic_centre": necrotic,
            }
        )

    haemorrhage = None
    if "haemorrhage" in kinds:
        # Intracerebral haematoma in the hemispheric white matter, lobar or deep (near the
        # basal ganglia), the two commonest sites of spontaneous haemorrhage.
        rng = rngs["haemorrhage"]
        drawn = rng.uniform(6.0, 11.0)
        radius = max(drawn, min_radius)
        cand = (wm > 0.6) & cerebrum & (np.abs(xx) > 20.0) & (wm_depth >= 3.0)
        idx = np.argwhere(cand)
        for _ in range(100):
            centre = world(idx[rng.integers(len(idx))]) + rng.uniform(-1.5, 1.5, 3)
            if free(centre, drawn):
                break
        blob = make_blob(rng, centre, radius, n_lobes=int(rng.integers(1, 3)), elongation=(1.0, 1.4), roughness=0.08)
        haemorrhage = blob
        # keep-outs use the drawn size (the blob scales with its radius), so that the
        # placement of later lesions does not depend on the grid
        taken.append((centre, blob.extent * drawn / radius + 6.0))
        ijk = np.clip(np.round((centre - aff[:3, 3]) / 3.0).astype(int), 0, np.array(grid.shape) - 1)
        placed.append(
            {
                "kind": "haemorrhage",
                "centre_mm": _round(centre),
                "radius_mm": round(float(radius), 1),
                "location": "deep" if brain_depth[tuple(ijk)] > 25.0 else "lobar",
                "stage": "late subacute (extracellular methaemoglobin)",
            }
        )

    periv = (wm > 0.8) & (vent_dist >= 3.0) & (vent_dist <= 12.0) & cerebrum
    deep = (wm > 0.8) & (wm_depth >= 4.0) & cerebrum
    pools = {True: np.argwhere(periv), False: np.argwhere(deep)}
    # direction away from the ventricles (world axes = array axes on this RAS grid)
    grad = np.stack(np.gradient(vent_dist), axis=-1)

    def ms_lesions(kind, rng, n, radii):
        out: list[Blob] = []
        tries = 0
        while len(out) < n and tries < 200:
            tries += 1
            periventricular = bool(rng.random() < 0.6 and len(pools[True]))
            pool = pools[periventricular]
            if not len(pool):
                break
            ijk = pool[rng.integers(len(pool))]
            centre = world(ijk) + rng.uniform(-1.5, 1.5, 3)
            drawn = rng.uniform(*radii)
            radius = max(drawn, min_radius)
            if not free(centre, drawn):
                continue
            rotation = None
            if periventricular:
                # Ovoid plaques perpendicular to the ventricle wall (Dawson's fingers).
                g = grad[tuple(ijk)]
                if np.linalg.norm(g) > 0:
                    rotation = _rotation_to(g, rng)
            blob = make_blob(
                rng,
                centre,
                radius,
                n_lobes=1,
                elongation=(1.2, 1.6) if rotation is not None else (1.0, 1.3),
                rotation=rotation,
                roughness=0.1,
            )
            out.append(blob)
            taken.append((centre, 1.5 * blob.lobes[0][1].max() * drawn / radius))
            placed.append(
                {
                    "kind": kind,
                    "centre_mm": _round(centre),
                    "radius_mm": round(float(radius), 1),
                    "location": "periventricular" if periventricular else "deep white matter",
                }
            )
        return out

    plaques = (
        ms_lesions("plaque", rngs["plaque"], int(rngs["plaque"].integers(4, 9)), (2.5, 7.0))
        if "plaque" in kinds
        else []
    )
    black_holes = (
        ms_lesions("black_hole", rngs["black_hole"], int(rngs["black_hole"].integers(1, 4)), (3.0, 6.5))
        if "black_hole" in kinds
        else []
    )
    return Placement(tumour, haemorrhage, plaques, black_holes, placed)
