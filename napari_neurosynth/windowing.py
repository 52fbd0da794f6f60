"""Window/level for reading: presets per contrast, window <-> contrast limits, the drag rule.

A radiologist reads with a *window* (the width of the grey ramp) and a *level*
(its centre) rather than with low/high limits, changes them by dragging the
mouse, and jumps between a few named presets. This module holds those rules as
plain functions over numpy; the viewer (``viewer/review.py``) only forwards
mouse moves and sets ``contrast_limits``.

Every preset is a percentile rule of the one display-window function,
:func:`napari_neurosynth.display.display_window`, over the same voxels (the brain
mask when one is given, else the head foreground), so the synthesized and the
acquired image get their windows by the same rule whatever their units:

- ``soft``: the default display window (0.5th-99.5th percentile, low end at
  zero): what every image gets when it is opened.
- ``wide``: the whole range of those voxels (0th-100th), low end at zero: the
  brightest vessel or lesion is not clipped.
- ``brain``: a narrow grey/white-matter window. The low end is lifted to a low
  percentile of the brain (dark CSF and air go black) and the high end drops,
  per contrast, below the bright CSF of T2/PD/FLAIR-weighted images, so that
  grey and white matter spread over the ramp.

Linked windowing between images in different units maps a window *relative to*
each image's own display window (:func:`relative_window`, :func:`apply_relative`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .display import DEFAULT_PERCENTILES, display_window

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "apply_relative",
    "checkerboard",
    "hanging_display",
    "drag_window_level",
    "limits_to_window_level",
    "preset_percentiles",
    "preset_window",
    "relative_window",
    "window_level_to_limits",
]

#: Preset names, in the order a menu shows them.
PRESET_NAMES: tuple[str, ...] = ("brain", "soft", "wide")

#: ``PRESETS[contrast][preset] = (low percentile, high percentile)`` of the brain
#: (or head) voxels. A low percentile of 0 means "the display rule's low end" (at
#: or below zero); above 0 it lifts the low end to that percentile. ``default``
#: serves contrasts not listed. The brain upper percentiles sit below the CSF peak
#: of each weighting (CSF is ~10 % of intracranial voxels and the brightest on T2).
PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "default": {"brain": (5.0, 98.0), "soft": DEFAULT_PERCENTILES, "wide": (0.0, 100.0)},
    "t1": {"brain": (10.0, 99.0), "soft": DEFAULT_PERCENTILES, "wide": (0.0, 100.0)},
    "t2": {"brain": (5.0, 90.0), "soft": DEFAULT_PERCENTILES, "wide": (0.0, 100.0)},
    "pd": {"brain": (5.0, 95.0), "soft": DEFAULT_PERCENTILES, "wide": (0.0, 100.0)},
    "flair": {"brain": (5.0, 99.0), "soft": DEFAULT_PERCENTILES, "wide": (0.0, 100.0)},
}

#: Presets whose low end is the low percentile itself, not the display rule's (at most zero).
_LIFTED = frozenset({"brain"})

#: Smallest window, as a fraction of the starting window of a drag (the ramp never collapses).
_MIN_WINDOW_FRACTION = 1e-3


def preset_percentiles(preset: str, contrast: str | None = None) -> tuple[float, float]:
    """The ``(low, high)`` percentiles of ``preset`` for ``contrast`` (``t1``, ``t2``, ``pd``, ``flair`` or other).

    Examples
    --------
    >>> preset_percentiles("soft")
    (0.5, 99.5)
    >>> preset_percentiles("brain", "T2")
    (5.0, 90.0)
    >>> preset_percentiles("brain", "dwi")  # an unknown contrast gets the default table
    (5.0, 98.0)
    >>> preset_percentiles("bone")
    Traceback (most recent call last):
    ...
    ValueError: unknown window preset 'bone'; use one of brain, soft, wide
    """
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown window preset {preset!r}; use one of {', '.join(PRESET_NAMES)}")
    table = PRESETS.get((contrast or "").lower(), PRESETS["default"])
    return table[preset]


def preset_window(
    data: npt.ArrayLike, preset: str, contrast: str | None = None, mask: npt.ArrayLike | None = None
) -> tuple[float, float]:
    """Contrast limits of ``preset`` for one image, by :func:`~napari_neurosynth.display.display_window`.

    The high end is ``display_window``'s upper percentile; a lifted low end is the
    upper limit of a ``(0, p_low)`` display window over the same voxels, i.e. the
    same rule's ``p_low`` percentile.

    Examples
    --------
    A "brain" of values 0..99 (one voxel each) in air:

    >>> import numpy as np
    >>> x = np.zeros((20, 20, 20), np.float32)
    >>> x[5:15, 5:15, 5] = np.arange(100).reshape(10, 10) + 1
    >>> mask = x > 0
    >>> preset_window(x, "wide", mask=mask)
    (0.0, 100.0)
    >>> [round(v, 2) for v in preset_window(x, "brain", "t1", mask=mask)]
    [10.9, 99.01]
    >>> preset_window(x, "soft", mask=mask) == display_window(x, mask)
    True
    """
    low_p, high_p = preset_percentiles(preset, contrast)
    if preset not in _LIFTED:
        return display_window(data, mask, percentiles=(low_p, high_p))
    low = display_window(data, mask, percentiles=(0.0, low_p))[1]
    high = display_window(data, mask, percentiles=(0.0, high_p))[1]
    if high <= low:
        high = low + 1.0
    return low, high


def limits_to_window_level(limits: tuple[float, float]) -> tuple[float, float]:
    """``(window, level)`` of contrast limits ``(low, high)``: width and centre.

    Examples
    --------
    >>> limits_to_window_level((0.0, 80.0))
    (80.0, 40.0)
    """
    low, high = (float(v) for v in limits)
    return high - low, (high + low) / 2.0


def window_level_to_limits(window: float, level: float) -> tuple[float, float]:
    """Contrast limits ``(low, high)`` of a ``window`` (width > 0) centred on ``level``.

    Examples
    --------
    >>> window_level_to_limits(80.0, 40.0)
    (0.0, 80.0)
    >>> window_level_to_limits(0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: the window must be wider than zero, got 0.0
    """
    window, level = float(window), float(level)
    if not window > 0.0:
        raise ValueError(f"the window must be wider than zero, got {window!r}")
    return level - window / 2.0, level + window / 2.0


def drag_window_level(
    start: tuple[float, float], dx: float, dy: float, sensitivity: float = 1.0 / 256.0
) -> tuple[float, float]:
    """New ``(window, level)`` after a mouse drag of ``(dx, dy)`` screen pixels from ``start``.

    The convention of scanner consoles and ITK-SNAP: dragging right widens the
    window (less contrast), dragging up raises the level (darker image; ``dy``
    is in screen pixels, positive downwards). Each pixel moves by ``sensitivity``
    times the starting window, so a 256-pixel drag changes the window by its own
    width whatever the units of the image. The window never falls below a
    thousandth of its starting width.

    Examples
    --------
    >>> drag_window_level((100.0, 50.0), dx=128, dy=0)
    (150.0, 50.0)
    >>> drag_window_level((100.0, 50.0), dx=0, dy=-64)  # 64 px up: level up by a quarter window
    (100.0, 75.0)
    >>> drag_window_level((100.0, 50.0), dx=-1000, dy=0)[0]
    0.1
    """
    window, level = (float(v) for v in start)
    step = window * float(sensitivity)
    new_window = max(window + float(dx) * step, window * _MIN_WINDOW_FRACTION)
    new_level = level - float(dy) * step
    return new_window, new_level


def relative_window(limits: tuple[float, float], reference: tuple[float, float]) -> tuple[float, float]:
    """``limits`` in units of a ``reference`` window: its low end is 0, its high end 1.

    Examples
    --------
    >>> relative_window((25.0, 75.0), (0.0, 100.0))
    (0.25, 0.75)
    """
    r_low, r_high = (float(v) for v in reference)
    span = r_high - r_low
    if not span > 0.0:
        raise ValueError(f"the reference window must have low < high, got {reference!r}")
    return (float(limits[0]) - r_low) / span, (float(limits[1]) - r_low) / span


def apply_relative(relative: tuple[float, float], reference: tuple[float, float]) -> tuple[float, float]:
    """Contrast limits of a ``relative`` window (from :func:`relative_window`) on another image's ``reference``.

    Linked windowing: the acquired image (scanner units) and the synthesized one
    (normalised units) each keep their own display window as the reference, and a
    change of one maps to the same change of the other.

    Examples
    --------
    >>> apply_relative((0.25, 0.75), (0.0, 2.0))
    (0.5, 1.5)
    >>> apply_relative(relative_window((10.0, 60.0), (0.0, 100.0)), (0.0, 100.0))
    (10.0, 60.0)
    """
    r_low, r_high = (float(v) for v in reference)
    span = r_high - r_low
    return r_low + float(relative[0]) * span, r_low + float(relative[1]) * span


def checkerboard(first: npt.ArrayLike, second: npt.ArrayLike, tile: int = 8) -> np.ndarray:
    """Alternate tiles of two images on one grid: ``first`` on the "white" squares, ``second`` on the others.

    The reader's swipe/flicker companion: an edge that breaks at a tile border
    is where the two images disagree. Pass both images already windowed to a
    common range (e.g. :func:`napari_neurosynth.display.rescale_to_window` of
    each with its own window), so that equal tissue meets at equal grey.
    Tiles are ``tile`` voxels wide along every axis.

    Examples
    --------
    >>> a, b = np.zeros((4, 4)), np.ones((4, 4))
    >>> checkerboard(a, b, tile=2)
    array([[0., 0., 1., 1.],
           [0., 0., 1., 1.],
           [1., 1., 0., 0.],
           [1., 1., 0., 0.]])
    >>> checkerboard(a, np.ones((3, 4)))
    Traceback (most recent call last):
    ...
    ValueError: checkerboard needs two images on one grid, got shapes (4, 4) and (3, 4)
    """
    a, b = np.asarray(first), np.asarray(second)
    if a.shape != b.shape:
        raise ValueError(f"checkerboard needs two images on one grid, got shapes {a.shape} and {b.shape}")
    if int(tile) < 1:
        raise ValueError(f"the tile must be at least one voxel, got {tile!r}")
    parity = sum(np.indices(a.shape) // int(tile)) % 2
    return np.where(parity == 0, a, b)


def hanging_display(
    data: npt.ArrayLike,
    preset: str = "soft",
    contrast: str | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    blinded: bool = False,
) -> tuple[np.ndarray, tuple[float, float]]:
    """The array and starting limits of one image of a reader study's hanging protocol.

    The array is :func:`~napari_neurosynth.display.prepare_display`'s (a blinded image
    rescaled so the study's display window is [0, 1]); the limits are ``preset``'s
    window of the original values (:func:`preset_window`), carried through the same
    rescaling. ``soft`` is the study's own display window, so a study without a
    hanging protocol shows what it always showed.

    Examples
    --------
    >>> x = np.zeros((20, 20, 20), np.float32)
    >>> x[5:15, 5:15, 5] = np.arange(100).reshape(10, 10) + 1
    >>> shown, limits = hanging_display(x, "soft", blinded=True)
    >>> limits, float(shown.max()) > 1.0 - 1e-6
    ((0.0, 1.0), True)
    >>> shown, limits = hanging_display(x, "wide", blinded=True)
    >>> [round(v, 3) for v in limits]   # the whole range: a little above the 99.5th percentile
    [0.0, 1.005]
    >>> hanging_display(x, "wide")[1]
    (0.0, 100.0)
    """
    from .display import prepare_display

    arr = np.asarray(data)
    shown, limits = prepare_display(arr, percentiles, blinded)
    if preset == "soft" and tuple(percentiles) == tuple(preset_percentiles("soft", contrast)):
        return shown, limits
    low, high = preset_window(arr, preset, contrast)
    if blinded:  # the same linear map prepare_display applied to the values
        w0, w1 = display_window(arr, percentiles=percentiles)
        low, high = (low - w0) / (w1 - w0), (high - w0) / (w1 - w0)
    return shown, (float(low), float(high))
