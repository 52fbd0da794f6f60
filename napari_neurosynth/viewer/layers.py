"""Turning :class:`~napari_neurosynth.io.Volume` objects into napari layers and back.

A layer made here carries the volume's affine as its napari ``affine`` (array
index -> RAS+ mm), so layers on different grids overlay in world space. Its
``metadata`` holds the volume's metadata (``source_path``, ``format``,
``warnings`` when it was read from disk). :func:`layer_to_volume` reads the geometry back
from napari's full data-to-world transform (scale, translate, rotate, shear and
affine), so a layer the user moved with napari's transform controls saves where
it is displayed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..display import display_window
from ..errors import NeurosynthError
from ..io import Volume

__all__ = [
    "volume_to_layer_data",
    "layer_to_volume",
    "affine_from_layer_attributes",
    "guess_layer_kind",
    "set_anatomical_view",
    "viewer_camera",
    "viewer_grid",
    "LABEL_NAME_PATTERN",
]

#: File/layer names that suggest a label map (opened as Labels when the data are integers).
LABEL_NAME_PATTERN = re.compile(r"mask|seg|label", re.IGNORECASE)


def guess_layer_kind(volume: Volume, name: str) -> str:
    """``"labels"`` for integer volumes whose name contains mask/seg/label, else ``"image"``."""
    if np.issubdtype(volume.data.dtype, np.integer) and LABEL_NAME_PATTERN.search(name or ""):
        return "labels"
    return "image"


def volume_to_layer_data(
    volume: Volume, name: str | None = None, kind: str = "image", **kwargs: Any
) -> tuple[np.ndarray, dict, str]:
    """A napari ``LayerDataTuple`` ``(data, kwargs, layer_type)`` for ``volume``.

    Parameters
    ----------
    volume : Volume
        Data and index -> RAS+ affine.
    name : str, optional
        Layer name; defaults to the file name of ``metadata["source_path"]``.
    kind : {"image", "labels"}
        Layer type. Labels need integer data (floats holding whole numbers are
        converted; anything else is refused).
    **kwargs
        Extra layer keyword arguments (``colormap``, ``opacity``, ...); they
        override the defaults. Image layers get ``contrast_limits`` from
        :func:`napari_neurosynth.display.display_window` unless given here.

    Returns
    -------
    tuple
        ``(data, layer_kwargs, layer_type)`` for ``viewer._add_layer_from_data``
        or a reader/sample-data contribution. ``layer_kwargs["affine"]`` is
        ``volume.affine``.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_neurosynth.io import Volume
    >>> vol = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> data, kw, kind = volume_to_layer_data(vol, name="t1")
    >>> kind, kw["name"], float(kw["affine"][2, 2])
    ('image', 't1', 3.0)
    """
    from ..io import volume_name

    if kind not in ("image", "labels"):
        raise NeurosynthError(f"unknown layer kind {kind!r}; use 'image' or 'labels'")
    data = np.asarray(volume.data)
    if data.ndim != 3:
        raise NeurosynthError(f"expected a 3-D volume, got an array of shape {data.shape}")
    if name is None:
        src = volume.metadata.get("source_path")
        name = volume_name(src) if src else "volume"
    if kind == "labels" and not np.issubdtype(data.dtype, np.integer):
        if data.dtype == np.bool_ or (np.all(np.isfinite(data)) and np.array_equal(data, np.round(data))):
            data = data.astype(np.int32 if data.size and np.max(np.abs(data)) > 255 else np.uint8)
        else:
            raise NeurosynthError(f"{name}: a Labels layer needs whole-number data, got {data.dtype} values")
    metadata = dict(volume.metadata)
    layer_kwargs: dict[str, Any] = {"name": name, "affine": volume.affine.copy(), "metadata": metadata}
    if kind == "image":
        if "contrast_limits" not in kwargs:
            # The one display rule for every compared image (napari's own estimate also breaks on NaN).
            layer_kwargs["contrast_limits"] = display_window(data)
        layer_kwargs["colormap"] = "gray"
        # napari guesses RGB(A) from a last axis of 3 or 4 (e.g. a 4-slice DICOM series); never for volumes
        layer_kwargs["rgb"] = False
    layer_kwargs.update(kwargs)
    return data, layer_kwargs, kind


def _transform_from_state(state: Mapping[str, Any], ndim: int) -> np.ndarray:
    from napari.utils.transforms import Affine, CompositeAffine

    def get(key, default):
        val = state.get(key)
        return default if val is None else val

    data2physical = CompositeAffine(
        get("scale", np.ones(ndim)),
        get("translate", np.zeros(ndim)),
        rotate=get("rotate", None),
        shear=get("shear", None),
        ndim=ndim,
    )
    aff = get("affine", np.eye(ndim + 1))
    physical2world = aff if isinstance(aff, Affine) else Affine(affine_matrix=np.asarray(aff, dtype=float))
    return physical2world.compose(data2physical).affine_matrix


def affine_from_layer_attributes(attributes: Mapping[str, Any], ndim: int = 3) -> np.ndarray:
    """The full 4x4 data -> world matrix from a layer's state dict (``layer._get_state()``).

    napari applies ``scale``/``translate``/``rotate``/``shear`` first, then
    ``affine``; writers receive these as separate attributes.
    """
    matrix = _transform_from_state(attributes, ndim)
    if matrix.shape != (ndim + 1, ndim + 1):
        raise NeurosynthError(f"expected a {ndim}-D layer transform, got a {matrix.shape} matrix")
    return matrix


def layer_transform_kwargs(layer: Any) -> dict[str, Any]:
    """A layer's full data -> world transform, as ``viewer.add_*`` keyword arguments.

    Passing them to a new layer puts it on the same grid whatever mix of affine,
    scale, translate, rotate and shear the source uses.
    """
    return {
        "affine": layer.affine,
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
    }


def layer_to_volume(layer: Any) -> Volume:
    """A :class:`Volume` from a napari Image or Labels layer, using its full world transform.

    Parameters
    ----------
    layer : napari.layers.Image or napari.layers.Labels
        A 3-D, single-channel layer (multiscale layers use their full-resolution level).

    Returns
    -------
    Volume
        ``data`` is the layer's array, ``affine`` its data -> world matrix (index ->
        RAS+ mm when the layer came from :func:`volume_to_layer_data`), ``metadata``
        a copy of the layer's metadata plus ``name``.

    Examples
    --------
    >>> vol = layer_to_volume(viewer.layers["t1"])  # doctest: +SKIP
    """
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    data = np.asarray(data)
    if getattr(layer, "rgb", False) or data.ndim != 3:
        raise NeurosynthError(
            f"layer {layer.name!r} has shape {data.shape}; a 3-D single-channel image or labels layer is needed"
        )
    affine = _transform_from_state(layer_transform_kwargs(layer), 3)
    metadata = dict(layer.metadata or {})
    metadata["name"] = layer.name
    return Volume(data, affine, metadata)


def layer_name_from_path(path: str | Path) -> str:
    """Layer name for a file or DICOM folder (file name without extension)."""
    from ..io import volume_name

    return volume_name(path)


#: napari ``dims.order`` and ``camera.orientation2d`` per plane for RAS+ world axes (0=R, 1=A, 2=S).
_PLANES = {
    # displayed (vertical, horizontal) = (A, R): anterior up; patient's right on screen left (radiological)
    "axial": ((2, 1, 0), ("up", "left")),
    # (S, R): superior up, patient's right on screen left
    "coronal": ((1, 2, 0), ("up", "left")),
    # (S, A): superior up, anterior (the nose) to the left
    "sagittal": ((0, 2, 1), ("up", "left")),
}


def set_anatomical_view(viewer: Any, plane: str = "axial", radiological: bool = True) -> None:
    """Show a standard anatomical plane of RAS+ layers (those made by :func:`volume_to_layer_data`).

    napari by default shows the last two world axes (A, S) with A running down
    the screen; this sets ``viewer.dims.order`` and the camera's ``orientation2d``
    so that axial and coronal views put superior/anterior up and, with
    ``radiological=True``, the patient's right on the screen's left
    (``False``: neurological convention, right on the right).

    Examples
    --------
    >>> set_anatomical_view(viewer, "coronal")  # doctest: +SKIP
    """
    if plane not in _PLANES:
        raise NeurosynthError(f"unknown plane {plane!r}; use one of {', '.join(_PLANES)}")
    if viewer.dims.ndim != 3:
        raise NeurosynthError(f"anatomical views need 3-D layers; the viewer has {viewer.dims.ndim} dimensions")
    order, (vertical, horizontal) = _PLANES[plane]
    if plane != "sagittal" and not radiological:
        horizontal = "right"
    viewer.dims.order = order
    viewer_camera(viewer).orientation2d = (vertical, horizontal)
    viewer.reset_view()


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` in napari >= 0.9 (``viewer.camera`` before, now deprecated)."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera


def viewer_grid(viewer: Any) -> Any:
    """The viewer's grid settings: ``viewer.canvas.grid`` in napari >= 0.9 (``viewer.grid`` before, now deprecated)."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid
