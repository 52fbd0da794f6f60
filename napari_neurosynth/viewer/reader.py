"""napari reader contribution: NIfTI, MGH/MGZ, NRRD, MetaImage and DICOM with their geometry.

``get_reader(path)`` is cheap: it only looks at extensions (and, for folders and
extension-less files, the DICOM preamble) and returns ``None`` for anything it
cannot open, so napari can try other readers (a ``.zarr`` folder, a ``.tif``).
The returned function reads the files; a supported-looking file that fails to
read raises :class:`~napari_neurosynth.errors.NeurosynthError`, which napari
shows as an error notification with the one-line reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io import detect_format, read_volume, volume_name
from .layers import guess_layer_kind, volume_to_layer_data

PathLike = str | os.PathLike
LayerData = tuple[Any, dict, str]

__all__ = ["get_reader", "read_layers"]


def get_reader(path: PathLike | Sequence[PathLike]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` if every path is a volume we can open, else ``None``.

    Parameters
    ----------
    path : str or list of str
        One path or several; a folder counts when it holds DICOM files.

    Examples
    --------
    >>> get_reader("notes.txt") is None  # doctest: +SKIP
    True
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in paths:
        p = Path(p)
        if p.suffix.lower() == ".zarr":
            return None
        if detect_format(p) is None:
            return None
    return read_layers


def read_layers(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Read one layer per path (a DICOM folder is one volume).

    Integer volumes whose file name contains ``mask``, ``seg`` or ``label`` open
    as Labels, everything else as Image. Each layer's ``affine`` is the volume's
    index -> RAS+ mm affine; its ``metadata`` carries ``source_path``,
    ``format`` and ``warnings``.

    Raises
    ------
    NeurosynthError
        When a file cannot be read (corrupt, truncated, 2-D, ...).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        volume = read_volume(p)
        name = volume_name(p)
        kind = guess_layer_kind(volume, name)
        layers.append(volume_to_layer_data(volume, name=name, kind=kind))
    return layers
