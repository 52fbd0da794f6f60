"""The display window: one rule for the contrast limits of every image the viewer shows.

A synthesized image is judged against the acquired one side by side, and a
reader-study image is judged against the other conditions; a difference in
windowing alone would make one look brighter or flatter than the other. So every
anatomical image gets its contrast limits from :func:`display_window`: the
opened volume, the phantom's sample layers, the synthesized layer, and the
images of a (blinded) reader study.

The rule, in numbers:

- **Which voxels.** Those inside ``mask`` when one is given; otherwise the
  head, as the inference engine's intensity normalisation defines it
  (:func:`~napari_neurosynth.preprocessing.foreground_mask`: brighter than a
  tenth of the 99th percentile). Background air would otherwise pull the
  upper percentile down. Non-finite voxels never count.
- **Upper limit.** The ``percentiles[1]`` percentile (99.5 by default) of
  those voxels.
- **Lower limit.** The ``percentiles[0]`` percentile (0.5), but never above
  zero: a magnitude image shows air black and every tissue above it, as a
  scanner console does; an image with negative values keeps its own lower
  percentile.

Only numpy; the viewer turns the limits into ``contrast_limits``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .preprocessing import foreground_mask

__all__ = ["DEFAULT_PERCENTILES", "display_window", "prepare_display", "rescale_to_window"]

#: Default window, in percentiles of the voxels the rule looks at.
DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def display_window(
    data: npt.ArrayLike,
    mask: npt.ArrayLike | None = None,
    *,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> tuple[float, float]:
    """Contrast limits ``(low, high)`` for showing ``data``, by the one rule of this module.

    Parameters
    ----------
    data : array_like
        The image (any shape; NaN and infinite voxels are ignored).
    mask : array_like of bool, optional
        Voxels to take the percentiles over (e.g. the brain mask). Default: the
        head foreground. An empty mask falls back to the foreground.
    percentiles : (float, float)
        Lower and upper percentile, ``0 <= low < high <= 100``.

    Returns
    -------
    (float, float)
        ``low < high``; ``(0.0, 1.0)`` when there is no finite voxel.

    Examples
    --------
    A head of value 100 with a few bright voxels, in air of value 0:

    >>> import numpy as np
    >>> x = np.zeros((20, 20, 20), np.float32)
    >>> x[5:15, 5:15, 5:15] = 100.0
    >>> x[5, 5, 5:9] = 400.0
    >>> display_window(x)
    (0.0, 100.0)
    >>> display_window(x, percentiles=(0.0, 100.0))
    (0.0, 400.0)

    The air does not lower the upper limit, and neither do NaN voxels:

    >>> x[0, 0, 0] = np.nan
    >>> display_window(x)
    (0.0, 100.0)

    Units do not matter: the same image in other units gets the same window in
    those units, which is what makes compared images look alike.

    >>> lo, hi = display_window(x / 4)
    >>> (lo, hi)
    (0.0, 25.0)

    A mask chooses the voxels. The head foreground is a rule for magnitude
    images; a signed image passes its own mask and keeps its lower percentile:

    >>> mask = np.zeros(x.shape, bool); mask[5, 5, :] = True
    >>> display_window(x, mask, percentiles=(0.0, 100.0))
    (0.0, 400.0)
    >>> signed = np.linspace(-1.0, 1.0, 101)
    >>> display_window(signed, np.isfinite(signed), percentiles=(0.0, 100.0))
    (-1.0, 1.0)

    Degenerate inputs still give a usable window:

    >>> display_window(np.full((4, 4), np.nan))
    (0.0, 1.0)
    >>> display_window(np.full((4, 4), 3.0))
    (0.0, 3.0)
    >>> display_window(np.zeros((4, 4)))
    (0.0, 1.0)
    """
    low_p, high_p = (float(p) for p in percentiles)
    if not 0.0 <= low_p < high_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"display_window needs a real-valued image, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    region = None
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != arr.shape:
            raise ValueError(f"mask shape {m.shape} does not match the image shape {arr.shape}")
        region = m & finite
        if not region.any():
            region = None
    if region is None:
        region = foreground_mask(arr)
        if not region.any():
            region = finite
    values = arr[region]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [low_p, high_p]))
    low = min(low, 0.0)
    if high <= low:
        high = low + 1.0
    return low, high


def rescale_to_window(data: npt.ArrayLike, window: tuple[float, float]) -> npt.NDArray[np.float32]:
    """``data`` mapped linearly so that ``window`` becomes [0, 1] (float32; NaN and inf -> 0).

    Examples
    --------
    >>> rescale_to_window(np.array([0.0, 50.0, 100.0, np.nan]), (0.0, 100.0))
    array([0. , 0.5, 1. , 0. ], dtype=float32)
    """
    low, high = (float(v) for v in window)
    if not high > low:
        raise ValueError(f"the window must have low < high, got {window!r}")
    arr = np.nan_to_num(np.asarray(data, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return ((arr - np.float32(low)) / np.float32(high - low)).astype(np.float32)


def prepare_display(
    data: npt.ArrayLike,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    blinded: bool = False,
    mask: npt.ArrayLike | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """The array and contrast limits to show for one image (the reader study's rule).

    Unblinded: the original values with :func:`display_window` as the limits.
    Blinded: the image rescaled so its window maps to [0, 1] (float32, NaN -> 0)
    with limits ``(0, 1)``, so neither the values under the cursor nor the
    contrast-limit slider tell one condition from another.

    Examples
    --------
    >>> x = np.zeros((10, 10)); x[2:8, 2:8] = 300.0
    >>> shown, limits = prepare_display(x, blinded=True)
    >>> limits, float(shown.max()), shown.dtype.name
    ((0.0, 1.0), 1.0, 'float32')
    >>> prepare_display(x)[1]
    (0.0, 300.0)
    """
    arr = np.asarray(data)
    window = display_window(arr, mask, percentiles=percentiles)
    if not blinded:
        return arr, window
    return rescale_to_window(arr, window), (0.0, 1.0)
