"""Structures placed in template (MNI152) millimetres: deep grey nuclei, choroid plexus, vessels, eyes.

Each is a union of simple solids (ellipsoids and tapered tubes) defined in MNI
space and rendered through the subject's pull-back, so it deforms with the
subject's anatomy.  Coordinates are rounded to the millimetre and were checked
against the template's grey-matter map (see ``docs/phantom.md`` for sources).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .physics import NUCLEI
from .template import TEMPLATE_ORIGIN, Deformation, Grid, template_1mm

# --------------------------------------------------------------------------------------
# Solids
# --------------------------------------------------------------------------------------


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix (degrees): ``yaw`` about S (z), ``pitch`` about R (x), ``roll`` about A (y)."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Ellipsoid:
    """A solid ellipsoid: ``centre`` (mm), semi-axes ``radii`` (mm), columns of ``rot`` its axes."""

    centre: np.ndarray
    radii: np.ndarray
    rot: np.ndarray

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        reach = np.sqrt(((self.rot * self.radii) ** 2).sum(axis=1))
        return self.centre - reach, self.centre + reach

    def distance(self, p: np.ndarray) -> np.ndarray:
        """First-order signed distance (mm, < 0 inside) at points ``p`` (..., 3).

        ``(|q| - 1) / |grad |q||`` with ``q`` the point in unit-sphere coordinates:
        exact on the surface, which is all a partial-volume ramp needs.

        Examples
        --------
        >>> e = Ellipsoid(np.zeros(3), np.array([2.0, 1.0, 1.0]), np.eye(3))
        >>> e.distance(np.array([[3.0, 0, 0], [0, 1.5, 0]])).round(3)
        array([1. , 0.5])
        """
        q = ((p - self.centre.astype(np.float32)) @ self.rot.astype(np.float32)) / self.radii.astype(np.float32)
        n = np.sqrt((q * q).sum(-1))
        g = (q / self.radii.astype(np.float32)) @ self.rot.T.astype(np.float32)
        gn = np.sqrt((g * g).sum(-1)) / np.maximum(n, 1e-6)
        return (n - 1.0) / np.maximum(gn, 1e-6)

    def mirrored(self) -> Ellipsoid:
        """The same solid mirrored left-right (x -> -x)."""
        m = np.diag([-1.0, 1.0, 1.0])
        return Ellipsoid(self.centre * [-1, 1, 1], self.radii, m @ self.rot)


@dataclass(frozen=True)
class Segment:
    """A tapered tube (capsule) from ``a`` to ``b`` with radii ``ra`` and ``rb`` (mm)."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.ra, self.rb)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def distance(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the tube wall (radius interpolated along the axis).

        Examples
        --------
        >>> s = Segment(np.zeros(3), np.array([10.0, 0, 0]), 1.0, 1.0)
        >>> s.distance(np.array([[5.0, 3.0, 0.0]])).round(3)
        array([2.])
        """
        a, ab = self.a.astype(np.float32), (self.b - self.a).astype(np.float32)
        t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        closest = a + t[..., None] * ab
        r = self.ra + (self.rb - self.ra) * t
        return np.sqrt(((p - closest) ** 2).sum(-1)) - r

    def mirrored(self) -> Segment:
        m = np.array([-1.0, 1.0, 1.0])
        return Segment(self.a * m, self.b * m, self.ra, self.rb)


#: A solid of the phantom's structures.
Solid = Ellipsoid | Segment


def tube(points, radii) -> list[Segment]:
    """A polyline tube through ``points`` (mm) with radii at each point."""
    pts = [np.asarray(p, float) for p in points]
    rs = list(radii) if np.ndim(radii) else [float(radii)] * len(pts)
    return [Segment(pts[i], pts[i + 1], rs[i], rs[i + 1]) for i in range(len(pts) - 1)]


def normal_width(d: np.ndarray, spacing) -> np.ndarray:
    """Per-voxel extent (mm) of an anisotropic voxel along the gradient of ``d``.

    ``sqrt(sum (n_i s_i)^2)`` for the unit normal ``n``: the spacing itself on an
    isotropic grid, the slice thickness for a surface parallel to the slices.
    """
    g = np.gradient(d, *spacing)
    num = sum((gi * si) ** 2 for gi, si in zip(g, spacing))
    den = sum(gi**2 for gi in g)
    w = np.sqrt(num / np.maximum(den, 1e-12)).astype(np.float32)
    return np.maximum(w, np.float32(min(spacing)))  # flat d (no normal): the finest spacing


def pv_occupancy(d: np.ndarray, spacing: tuple[float, float, float], soften: float = 0.0) -> np.ndarray:
    """Partial-volume occupancy ``clip(0.5 - d / w, 0, 1)`` of a solid with signed distance ``d`` (mm).

    ``w`` is the voxel's extent along the surface normal (the spacing on an
    isotropic grid; from the gradient of ``d`` on an anisotropic one), widened by
    ``soften`` mm for structures whose border is gradual.

    Examples
    --------
    >>> pv_occupancy(np.array([-2.0, 0.0, 0.5, 2.0]), (1.0, 1.0, 1.0)).tolist()
    [1.0, 0.5, 0.0, 0.0]
    """
    w: float | np.ndarray
    if max(spacing) - min(spacing) < 1e-9 or min(d.shape) < 2:
        w = float(np.mean(spacing))
    else:
        w = normal_width(d, spacing)
    if soften:
        w = np.sqrt(w * w + soften * soften)
    return np.clip(0.5 - d / w, 0.0, 1.0).astype(np.float32)


def render(solids, grid: Grid, deformation: Deformation, soften: float = 0.0):
    """Yield ``(region, occupancy)`` of each solid (in template mm) on ``grid`` through the pull-back."""
    for solid in solids:
        lo, hi = solid.bbox()
        lo, hi = deformation.template_box_to_world(lo - 2 * soften, hi + 2 * soften)
        region = grid.region(lo, hi, pad=2)
        if region is None:
            continue
        pts = deformation.pullback(grid.axes(region))
        occ = pv_occupancy(solid.distance(pts), grid.spacing, soften)
        if occ.any():
            yield region, occ


# --------------------------------------------------------------------------------------
# Deep grey nuclei
# --------------------------------------------------------------------------------------

# Right-hemisphere solids (mirrored to the left): centre (MNI mm), semi-axes (mm), yaw and
# pitch (degrees).  Centres and extents follow the Harvard-Oxford subcortical atlas in MNI152
# space (Desikan RS et al., NeuroImage 2006;31:968-980; FSL) for caudate, putamen, pallidum
# and thalamus, the 7 T MNI atlas of Keuken MC et al. (NeuroImage 2014;94:40-46) for the
# substantia nigra and red nucleus, and the SUIT cerebellar atlas (Diedrichsen J et al.,
# NeuroImage 2009;46:39-46) for the dentate nucleus; checked against the 2009a template.
_NUCLEUS_SOLIDS: dict[str, list[tuple[tuple, tuple, float, float]]] = {
    "caudate": [((13, 13, 9), (5.0, 9.0, 8.0), 0.0, 0.0), ((16, -8, 20), (3.5, 11.0, 4.0), -10.0, 25.0)],
    "putamen": [((25, 2, 1), (5.5, 16.0, 9.5), -8.0, 0.0)],
    "globus_pallidus": [((19, -4, -1), (4.0, 10.0, 5.5), -20.0, 0.0)],
    "thalamus": [((11, -18, 7), (7.0, 13.0, 8.0), -15.0, 0.0)],
    "substantia_nigra": [((11, -18, -12), (3.0, 8.0, 2.5), -35.0, 0.0)],
    "red_nucleus": [((5, -19, -8), (3.2, 3.5, 3.5), 0.0, 0.0)],
    "dentate": [((15, -56, -34), (5.0, 7.5, 5.0), 30.0, 0.0)],
}

#: Nuclei whose extent is cut to the template's grey-matter map (they are GM there); the
#: pallidum, nigra, red nucleus and dentate look partly like WM on that map (myelinated
#: fibres, iron), so they replace both.
GM_RESTRICTED = ("caudate", "putamen", "thalamus")

#: ``nuclei`` label map values (``tissues=True``).
NUCLEI_LABELS = {i + 1: name for i, name in enumerate(NUCLEI)}


def nucleus_solids(name: str, rng: np.random.Generator | None = None) -> list[Ellipsoid]:
    """Both hemispheres' solids of one nucleus; ``rng`` jitters size (+-8 %) and position (~1 mm) per subject."""
    out = []
    for centre, radii, yaw, pitch in _NUCLEUS_SOLIDS[name]:
        for side in (1.0, -1.0):
            c = np.array(centre, float)
            r = np.array(radii, float)
            if rng is not None:
                r = r * rng.uniform(0.92, 1.08)
                c = c + rng.normal(0.0, 0.7, 3)
            e = Ellipsoid(c, r, rotation(yaw, pitch))
            out.append(e if side > 0 else e.mirrored())
    return out


# --------------------------------------------------------------------------------------
# Choroid plexus
# --------------------------------------------------------------------------------------


def choroid_solids() -> list[Solid]:
    """The glomus in each atrium of the lateral ventricles and a strand along the body's floor."""
    right: list[Solid] = [Ellipsoid(np.array([25.0, -38.0, 12.0]), np.array([4.5, 7.0, 4.5]), rotation(-20.0))]
    right += tube([(25, -38, 12), (19, -24, 17), (12, -8, 15), (6, 0, 10)], [2.5, 1.8, 1.5, 1.2])
    return right + [s.mirrored() for s in right]


# --------------------------------------------------------------------------------------
# Vessels (flow voids) and eyes
# --------------------------------------------------------------------------------------


def _sd_at(points: np.ndarray) -> np.ndarray:
    sd = template_1mm()["sd"]
    q = (np.atleast_2d(points) - TEMPLATE_ORIGIN - 0.5) / 2.0
    return ndi.map_coordinates(sd, q.T, order=1, mode="nearest")


def _on_hull(centre, directions, offset: float) -> np.ndarray:
    """Where rays from ``centre`` cross the brain hull's signed distance ``offset`` (mm)."""
    r = np.arange(0.0, 160.0, 0.5)
    out = []
    for d in directions:
        d = np.asarray(d, float) / np.linalg.norm(d)
        pts = np.asarray(centre, float) + r[:, None] * d
        k = int(np.argmax(_sd_at(pts) > offset))
        out.append(pts[k])
    return np.array(out)


@functools.lru_cache(maxsize=1)
def vessel_solids() -> tuple:
    """Large vessels as tubes: dural sinuses along the hull, basilar, internal carotids and M1 segments.

    The superior sagittal sinus follows the midline of the brain hull from the frontal
    region over the vertex to the torcula (radius 2.5 -> 4.5 mm); the transverse sinuses
    run laterally from the torcula along the occipital hull (3.5 mm).  Arteries (MNI mm):
    basilar along the ventral pons, supraclinoid internal carotids to their terminus and
    the M1 segments of the middle cerebral arteries towards the sylvian fissure.
    """
    solids: list[Solid] = []
    angles = np.deg2rad(np.arange(30.0, 192.0, 9.0))
    sss_r = np.linspace(2.5, 4.5, len(angles))
    crossing = _on_hull([0.0, -18.0, 15.0], [(0.0, math.cos(a), math.sin(a)) for a in angles], 0.0)
    # sink the sinus into the hull surface by most of its radius (it sits in the dura's groove)
    arc = [p + np.array([0.0, math.cos(a), math.sin(a)]) * 0.8 * r for p, a, r in zip(crossing, angles, sss_r)]
    solids += tube(arc, sss_r)
    torcula = arc[-1]
    side = np.deg2rad(np.arange(0.0, 84.0, 12.0))
    for sign in (1.0, -1.0):
        rays = [(sign * math.sin(t), -math.cos(t), -0.15 * math.sin(t)) for t in side]
        hits = _on_hull([0.0, -50.0, float(torcula[2])], rays, 0.0)
        path = [torcula] + [p + np.asarray(d) / np.linalg.norm(d) * 2.8 for p, d in zip(hits[1:], rays[1:])]
        solids += tube(path, 3.5)
    solids += tube([(0, -13, -46), (0, -12, -36), (0, -11, -26), (0, -13, -19)], [1.7, 1.6, 1.6, 1.5])
    right: list[Solid] = []
    right += tube([(16, -4, -40), (17, -1, -30), (15, 2, -20), (14, 3, -15)], [2.3, 2.3, 2.1, 2.0])
    right += tube([(14, 3, -15), (26, 4, -13), (36, 4, -10)], [1.6, 1.5, 1.3])
    solids += right + [s.mirrored() for s in right]
    return tuple(solids)


def eye_parts() -> list[tuple[str, list[Solid]]]:
    """The orbits, in painting order (later parts overwrite earlier ones): tissue name and solids (MNI mm).

    Globe (radius 12 mm) at (+-32, 56, -40) inside a cone of orbital fat walled by
    bone, with the four recti, the optic nerve towards the orbital apex, sclera,
    vitreous, lens and the eyelids.
    """
    globe = np.array([32.0, 56.0, -40.0])
    apex = np.array([16.0, 22.0, -33.0])
    axis = (globe - apex) / np.linalg.norm(globe - apex)
    orbit_rot = _frame(axis)
    fat_centre = (globe + apex) / 2 + axis * 4.0
    parts: list[tuple[str, list[Solid]]] = [
        ("bone", [Ellipsoid(fat_centre, np.array([21.0, 15.5, 15.5]), orbit_rot)]),
        ("fat", [Ellipsoid(fat_centre + axis * 2.0, np.array([20.0, 13.5, 13.5]), orbit_rot)]),
    ]
    muscles: list[Solid] = []
    for off in ((0, 0, 9.5), (0, 0, -9.5), (9.5, 0, 0), (-9.5, 0, 0)):
        end = globe + np.array(off) - axis * 4.0
        muscles += tube([apex + np.array(off) * 0.2, end], [1.5, 2.2])
    parts.append(("muscle", muscles))
    nerve: list[Solid] = list(tube([apex, globe - axis * 11.5], [1.8, 2.2]))
    parts.append(("wm", nerve))  # optic nerve: myelinated
    parts.append(("sclera", [Ellipsoid(globe, np.full(3, 12.0), np.eye(3))]))
    parts.append(("vitreous", [Ellipsoid(globe, np.full(3, 11.0), np.eye(3))]))
    parts.append(("lens", [Ellipsoid(globe + axis * 7.5, np.array([2.0, 4.5, 4.5]), orbit_rot)]))
    # closed eyelids: a thin disc of skin in front of the cornea
    parts.append(("skin", [Ellipsoid(globe + axis * 13.2, np.array([1.0, 9.0, 9.0]), orbit_rot)]))
    return [(tissue, solids + [s.mirrored() for s in solids]) for tissue, solids in parts]


def _frame(axis: np.ndarray) -> np.ndarray:
    """A rotation whose first column is ``axis``."""
    helper = np.array([0.0, 0.0, 1.0])
    e2 = np.cross(helper, axis)
    e2 /= np.linalg.norm(e2)
    return np.stack([axis, e2, np.cross(axis, e2)], axis=1)
