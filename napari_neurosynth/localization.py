"""Scoring of lesion-localisation marks against a ground-truth lesion mask (FROC/LROC-ready).

A reader answers a ``localisation`` question with marks: world points in RAS
millimetres (what napari's world coordinates are for a layer whose affine is the
:class:`~napari_neurosynth.io.Volume` affine), each with a confidence from 1 to 5.
Against the case's lesion mask:

* each **lesion** is a connected component of the mask's non-zero voxels
  (26-connectivity: voxels touching at a corner belong to one lesion);
* a **mark hits** when its voxel lies inside the mask dilated by the question's
  ``margin_mm``, i.e. within ``margin_mm`` of a lesion voxel, distances in
  millimetres through the mask's voxel spacing
  (:func:`scipy.ndimage.distance_transform_edt` with ``sampling``); a hit belongs to
  the nearest lesion; a mark outside the mask's grid misses;
* a lesion is **found** when at least one mark hits it; its rating is the highest
  confidence of those marks (0 when missed): one row per lesion and one per mark
  is what FROC analysis needs;
* the case's **LROC-ready score**: for a case with lesions, the highest confidence
  of the marks that hit (0 when none does: a mark in the wrong place does not
  count as a detection); for a case without lesions, the highest confidence of any
  mark (all false), 0 without marks. Its AUC over cases (lesion vs no lesion)
  rewards only correctly localised detections. With one mark per case it is close
  to the area under the LROC curve, differing in that a lesion case with a missed
  mark ties with a lesion-free case without marks instead of losing to it.
  ``top_mark_hit`` (did the most confident mark hit?) gives the classical LROC
  pair (``max_confidence``, ``top_mark_hit``) as well.

Examples
--------
>>> import numpy as np
>>> from napari_neurosynth.io import Volume
>>> mask = np.zeros((20, 20, 20), np.uint8); mask[4:7, 4:7, 4:7] = 1; mask[14:16, 14:16, 14:16] = 1
>>> truth = LesionTruth(Volume(mask, np.diag([2.0, 2.0, 2.0, 1.0])))     # 2 mm voxels
>>> truth.n_lesions, truth.lesions[0].centroid_mm
(2, (10.0, 10.0, 10.0))
>>> score = truth.score([{"x": 10, "y": 10, "z": 10, "confidence": 4}, {"x": 10, "y": 10, "z": 16, "confidence": 2}],
...                     margin_mm=3.0)
>>> [(m.hit, m.lesion, m.distance_mm) for m in score.marks]
[(True, 1, 0.0), (False, 1, 4.0)]
>>> [(les.lesion, les.found, les.confidence) for les in score.lesions], score.lroc_score
([(1, True, 4), (2, False, 0)], 4)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import NeurosynthError
from .io import Volume

__all__ = ["CaseScore", "LesionScore", "LesionTruth", "MarkScore", "score_case"]


@dataclass(frozen=True)
class MarkScore:
    """One mark, scored: ``hit``, the nearest ``lesion`` label and the distance to it in mm."""

    index: int
    x: float
    y: float
    z: float
    confidence: int
    hit: bool
    lesion: int | None
    distance_mm: float


@dataclass(frozen=True)
class LesionScore:
    """One lesion (connected component): size, centroid, found or missed, highest confidence of its hits."""

    lesion: int
    voxels: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    found: bool
    confidence: int


@dataclass(frozen=True)
class CaseScore:
    """All marks and lesions of one read of one case, and its LROC-ready score."""

    marks: list[MarkScore]
    lesions: list[LesionScore]
    abnormal: bool
    lroc_score: int
    max_confidence: int
    top_mark_hit: bool

    @property
    def n_false_marks(self) -> int:
        return sum(not m.hit for m in self.marks)


class LesionTruth:
    """A ground-truth lesion mask, prepared once (components and distance map) to score many reads.

    Parameters
    ----------
    mask : Volume
        Non-zero voxels are lesion (label values are ignored: components define lesions).
    """

    def __init__(self, mask: Volume) -> None:
        from scipy import ndimage

        data = np.asarray(mask.data)
        if data.ndim != 3:
            raise NeurosynthError(f"a lesion mask must be 3-D, got shape {data.shape}")
        self.volume = mask
        self.spacing = tuple(float(s) for s in mask.spacing)
        structure = ndimage.generate_binary_structure(3, 3)
        labels, n = ndimage.label(data != 0, structure=structure)
        self.labels: NDArray[np.int32] = labels.astype(np.int32)
        self.n_lesions = int(n)
        self._inverse = np.linalg.inv(mask.affine)
        if n:
            # Distance (mm) from every voxel to the nearest lesion voxel, and that voxel's index.
            dist, nearest = ndimage.distance_transform_edt(labels == 0, sampling=self.spacing, return_indices=True)
            self._distance: NDArray[np.float64] | None = dist
            self._nearest: NDArray[np.intp] | None = nearest
        else:
            self._distance = self._nearest = None
        voxel_mm3 = float(abs(np.linalg.det(mask.affine[:3, :3])))
        self.lesions: list[LesionScore] = []
        if n:
            index = np.arange(1, n + 1)
            counts = ndimage.sum_labels(np.ones_like(labels), labels, index)
            centres = ndimage.center_of_mass(np.ones_like(labels), labels, index)
            for label, count, centre in zip(index, counts, centres):
                world = mask.affine @ np.array([*centre, 1.0])
                self.lesions.append(
                    LesionScore(
                        int(label),
                        int(count),
                        float(count) * voxel_mm3,
                        (float(world[0]), float(world[1]), float(world[2])),
                        False,
                        0,
                    )
                )

    def _locate(self, point: tuple[float, float, float]) -> tuple[float, int | None]:
        """(distance in mm to the nearest lesion, its label) for a world point; (inf, None) off the grid."""
        if self._distance is None or self._nearest is None:
            return float("inf"), None
        ijk = np.rint(self._inverse @ np.array([*point, 1.0]))[:3].astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.array(self.labels.shape)):
            return float("inf"), None
        i, j, k = (int(v) for v in ijk)
        nearest = tuple(int(v) for v in self._nearest[:, i, j, k])
        return float(self._distance[i, j, k]), int(self.labels[nearest])

    def score(self, marks: Iterable[Mapping[str, Any]], margin_mm: float) -> CaseScore:
        """Score one read's marks (dicts with ``x, y, z, confidence``) with a hit margin in mm."""
        if margin_mm < 0:
            raise NeurosynthError(f"the hit margin must be >= 0 mm, got {margin_mm}")
        scored: list[MarkScore] = []
        best: dict[int, int] = {}
        for i, mark in enumerate(marks):
            point = (float(mark["x"]), float(mark["y"]), float(mark["z"]))
            confidence = int(mark["confidence"])
            distance, label = self._locate(point)
            # A tiny tolerance: a margin of exactly one voxel must include that voxel.
            hit = label is not None and distance <= margin_mm + 1e-6
            scored.append(MarkScore(i, *point, confidence, hit, label, distance))
            if hit and label is not None:
                best[label] = max(best.get(label, 0), confidence)
        lesions = [
            LesionScore(
                les.lesion, les.voxels, les.volume_mm3, les.centroid_mm, les.lesion in best, best.get(les.lesion, 0)
            )
            for les in self.lesions
        ]
        abnormal = self.n_lesions > 0
        max_confidence = max((m.confidence for m in scored), default=0)
        hit_confidence = max((m.confidence for m in scored if m.hit), default=0)
        top = max(scored, key=lambda m: (m.confidence, m.hit), default=None)
        return CaseScore(
            marks=scored,
            lesions=lesions,
            abnormal=abnormal,
            lroc_score=hit_confidence if abnormal else max_confidence,
            max_confidence=max_confidence,
            top_mark_hit=bool(top is not None and top.hit),
        )


def score_case(marks: Iterable[Mapping[str, Any]], lesion_mask: Volume, margin_mm: float) -> CaseScore:
    """Score one read's marks against a lesion mask (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_neurosynth.io import Volume
    >>> empty = Volume(np.zeros((8, 8, 8), np.uint8), np.eye(4))
    >>> s = score_case([{"x": 1, "y": 1, "z": 1, "confidence": 3}], empty, margin_mm=2)
    >>> s.abnormal, s.lroc_score, s.marks[0].hit, s.n_false_marks
    (False, 3, False, 1)
    """
    return LesionTruth(lesion_mask).score(marks, margin_mm)
