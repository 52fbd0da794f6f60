"""napari sample data: the multi-contrast brain phantom (File > Open Sample)."""

from __future__ import annotations

from typing import Any

#: Resolution of the sample: 1.5 mm opens in a few seconds and still shows the
#: plaques; the full 1 mm grid takes ~10 s to synthesise on one core.
SAMPLE_RESOLUTION = 1.5

# Label colours: 1 tumour core (red), 2 oedema (yellow), 3 plaque (cyan), 4 black hole (violet),
# 5 haemorrhage (orange).
_LESION_COLORS = {
    0: "transparent",
    1: "#e8382c",
    2: "#f5d224",
    3: "#27c6e8",
    4: "#9b5cf6",
    5: "#ff8c1a",
    None: "transparent",
}


def phantom_sample(seed: int = 0, resolution: float = SAMPLE_RESOLUTION) -> list[tuple[Any, dict, str]]:
    """LayerData tuples of a phantom: T1, T2, PD, FLAIR images, brain mask and lesion labels.

    Parameters
    ----------
    seed : int
        Subject seed passed to :func:`napari_neurosynth.make_phantom`.
    resolution : float
        Voxel size in mm.

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer_type)`` tuples; every layer carries the phantom's
        index -> RAS+ affine, so they overlay in world millimetres.

    Examples
    --------
    >>> viewer.open_sample("napari-neurosynth", "phantom")  # doctest: +SKIP
    """
    from napari.utils.colormaps import DirectLabelColormap

    from ..phantom import make_phantom
    from .layers import volume_to_layer_data

    ph = make_phantom(seed=seed, lesions=True, resolution=resolution)
    layers = []
    # T1 on top and visible; the others underneath, hidden, ready to toggle.
    for key, name in (("flair", "FLAIR"), ("pd", "PD"), ("t2", "T2"), ("t1", "T1")):
        # Contrast limits by the one display rule (display_window), as for every image the
        # viewer shows, so a synthesized T2 and this acquired T2 are windowed alike.
        layers.append(
            volume_to_layer_data(
                ph[key], name=name, kind="image", colormap="gray", visible=key == "t1", blending="translucent_no_depth"
            )
        )
    layers.append(volume_to_layer_data(ph["brain_mask"], name="brain mask", kind="labels", visible=False, opacity=0.3))
    layers.append(
        volume_to_layer_data(
            ph["lesion_mask"],
            name="lesions",
            kind="labels",
            opacity=0.6,
            colormap=DirectLabelColormap(color_dict=_LESION_COLORS),
        )
    )
    return layers
