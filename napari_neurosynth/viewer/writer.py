"""napari writer contribution: save an Image (or Labels) layer with its world geometry.

The layer's full data -> world transform (napari's ``scale``, ``translate``,
``rotate``, ``shear`` and ``affine``) becomes the file's affine, so a volume
opened with our reader saves back onto the grid it came from. The format
follows the extension (``.nii.gz``, ``.nii``, ``.mgz``, ``.mgh``, ``.nrrd``,
``.mha``, ``.mhd``); a path without one of these gets ``.nii.gz``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NeurosynthError
from ..io import WRITABLE_EXTENSIONS, Volume, write_volume
from .layers import affine_from_layer_attributes

__all__ = ["write_image", "write_labels"]


def _target(path: str) -> Path:
    p = Path(path)
    if not any(p.name.lower().endswith(ext) for ext in WRITABLE_EXTENSIONS):
        p = p.with_name(p.name + ".nii.gz")
    return p


def _write(path: str, data: Any, attributes: Mapping[str, Any], labels: bool) -> list[str]:
    if attributes.get("multiscale"):
        data = data[0]
    if attributes.get("rgb"):
        raise NeurosynthError("cannot save an RGB layer as a medical volume; convert it to one channel first")
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise NeurosynthError(f"only 3-D layers can be saved as volumes; this one has shape {arr.shape}")
    if labels and not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int32)
    affine = affine_from_layer_attributes(attributes, ndim=3)
    metadata = dict(attributes.get("metadata") or {})
    target = _target(path)
    write_volume(Volume(arr, affine, metadata), target)
    return [str(target)]


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Save an image layer to ``path`` with its affine; returns ``[written_path]``.

    Parameters
    ----------
    path : str
        Destination; the extension chooses the format.
    data : array-like
        The layer's 3-D data.
    attributes : dict
        The layer's state (``layer._get_state()``), from which ``scale``,
        ``translate``, ``rotate``, ``shear`` and ``affine`` are used.

    Examples
    --------
    >>> viewer.layers.save("t1_copy.nii.gz", selected=True, plugin="napari-neurosynth")  # doctest: +SKIP
    """
    return _write(path, data, attributes, labels=False)


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a Labels layer (integer data kept) to ``path`` with its affine; returns ``[path]``."""
    return _write(path, data, attributes, labels=True)
