"""napari reader contribution: NIfTI, MGH/MGZ, NRRD, MetaImage and DICOM with their geometry.

``get_reader(path)`` is cheap: it only looks at extensions (and, for folders and
extension-less files, the DICOM preamble) and returns ``None`` for anything it
cannot open, so napari can try other readers (a ``.zarr`` folder, a ``.tif``).
The returned function reads the files; a supported-looking file that fails to
read raises :class:`~napari_neurosynth.errors.NeurosynthError`, which napari
shows as an error notification with the one-line reason.

DICOM: a folder opens **every 3-D series in it as its own layer** (named
``FOLDER #INDEX DESCRIPTION``; just ``FOLDER`` when it holds one series), rather than asking: a reader runs headless too
(``viewer.open`` in a script), and the layers of one exam share world space, so
the user hides what they do not need. Localizers are dropped, series that cannot
be a volume (single slices, colour captures, reports) are left out, each with a
warning that napari shows as a notification. Uneven slice spacing is
resampled onto a uniform grid with a warning (the viewer has no one to ask; the
warning is also in the layer's ``metadata["warnings"]``). One DICOM file opens
its own series only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..dicom import list_series
from ..errors import NeurosynthError, NeurosynthWarning
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
    """Read one layer per path; a DICOM folder gives one layer per 3-D series.

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
        if Path(p).is_dir():
            layers.extend(_dicom_folder_layers(Path(p)))
            continue
        volume = read_volume(p, uneven="resample") if detect_format(p) == "dicom" else read_volume(p)
        name = volume_name(p)
        kind = guess_layer_kind(volume, name)
        layers.append(volume_to_layer_data(volume, name=name, kind=kind))
    return layers


def _dicom_folder_layers(folder: Path) -> list[LayerData]:
    """One layer per 3-D series of a DICOM folder; the others are named in warnings."""
    series = list_series(folder)
    openable = [s for s in series if s.problem is None]
    if not openable:  # nothing is a volume: the reason for the largest series, as one message
        read_volume(folder)
    layers: list[LayerData] = []
    messages: list[str] = []  # each folder note once, not once per series
    for s in series:
        if s.problem is not None:
            messages.append(f"{folder.name}: series {s.index} not opened: {s.problem}")
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                volume = read_volume(folder, series=s.index, uneven="resample")
        except NeurosynthError as exc:
            if len(openable) == 1:
                raise
            messages.append(f"{folder.name}: series {s.index} not opened: {exc}")
            continue
        messages.extend(str(w.message) for w in caught)
        name = volume_name(folder)
        if len(series) > 1:
            name += f" #{s.index}" + (f" {s.description}" if s.description else "")
        layers.append(volume_to_layer_data(volume, name=name, kind=guess_layer_kind(volume, name)))
    for message in dict.fromkeys(messages):
        warnings.warn(message, NeurosynthWarning, stacklevel=3)
    if not layers:
        read_volume(folder, series=openable[0].index, uneven="resample")  # raises the first series' reason
    return layers
