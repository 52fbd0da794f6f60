"""Where and why a synthesized volume disagrees with the acquired one.

The package has one module per role; every name is importable from here:

- :mod:`~napari_neurosynth.explain.difference`: :func:`difference_map`, the signed
  difference *synthesized - acquired* as a z-map, normalised by the robust spread
  of the residual in normal-appearing brain tissue, so that disagreements (an
  erased or invented lesion) stand out against the generator's ordinary error;
  :func:`disagreement_regions`, the z-map thresholded into connected regions,
  with a table per region (size, mean z, world centroid, sign).
- :mod:`~napari_neurosynth.explain.fidelity`: :func:`lesion_fidelity`, per lesion,
  contrast and contrast-to-noise ratio against the surrounding normal-appearing
  tissue in the acquired and the synthesized image; flags erased lesions and
  invented ones.
- :mod:`~napari_neurosynth.explain.cam`: :func:`gradcam`, class-activation maps
  for an image-to-image generator, the score being the mean output inside a
  region of interest; HiResCAM (element-wise, the default) or the original
  Grad-CAM (:data:`CAM_METHODS`).
- :mod:`~napari_neurosynth.explain.occlusion`: :func:`occlusion_map`, the
  model-agnostic alternative for models without gradients (ONNX): how much hiding
  each patch of the input changes the output inside the same ROI (captum's Occlusion).
  :mod:`~napari_neurosynth.explain.cam3d` explains 3-D patch models in the window
  around the ROI.
- :mod:`~napari_neurosynth.explain.uncertainty_map`: :func:`uncertainty`, the
  per-voxel spread of the synthesis under test-time augmentation (left-right
  flips, small in-plane shifts) and MC dropout when the network has dropout layers.

The statistics helpers :func:`robust_sigma`, :func:`roc_auc` and :func:`dice` live in
:mod:`napari_neurosynth.metrics` and are re-exported here for old imports.

All functions take numpy arrays or :class:`~napari_neurosynth.io.Volume`; with
Volumes, sizes come out in mm3 and centroids in RAS+ millimetres. ``mask`` and
``lesion`` are keyword arguments (``difference_map``'s brain mask may also come
third, as in the public contract), and ``normalize`` defaults to True everywhere.
See ``docs/compare-explain.md`` for the definitions and the rules.

Examples
--------
>>> import numpy as np
>>> from napari_neurosynth.explain import difference_map, disagreement_regions
>>> rng = np.random.default_rng(1)
>>> t = 1 + 0.05 * rng.standard_normal((16, 16, 16)); s = t + 0.05 * rng.standard_normal(t.shape)
>>> s[5:8, 5:8, 5:8] -= 1.0  # the synthesis erases a bright spot
>>> labels, table = disagreement_regions(difference_map(s, t, np.ones(t.shape), normalize=False, bias_mm=None))
>>> table[0]["direction"], table[0]["voxels"]
('synthesis darker', 27)
"""

from __future__ import annotations

from ..metrics import dice, robust_sigma, roc_auc
from .cam import CAM_METHODS, gradcam
from .difference import RegionRow, difference_map, disagreement_regions
from .fidelity import Contrast, FidelityResult, InventedRow, LesionRow, lesion_fidelity
from .occlusion import occlusion_map
from .uncertainty_map import uncertainty

__all__ = [
    "CAM_METHODS",
    "Contrast",
    "FidelityResult",
    "InventedRow",
    "LesionRow",
    "RegionRow",
    "dice",
    "difference_map",
    "disagreement_regions",
    "gradcam",
    "lesion_fidelity",
    "occlusion_map",
    "robust_sigma",
    "roc_auc",
    "uncertainty",
]
