"""napari-neurosynth: cross-modality MRI synthesis, review and reader studies.

The public API is importable from the package root; heavy dependencies (torch,
SimpleITK, napari) load lazily on first use so ``import napari_neurosynth`` stays
cheap for the CLI and for napari's plugin discovery.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# name -> module that defines it
_EXPORTS = {
    "Volume": "napari_neurosynth.io",
    "read_volume": "napari_neurosynth.io",
    "write_volume": "napari_neurosynth.io",
    "resample_to": "napari_neurosynth.io",
    "same_grid": "napari_neurosynth.io",
    "check_finite": "napari_neurosynth.io",
    "make_phantom": "napari_neurosynth.phantom",
    "Model": "napari_neurosynth.bundle",
    "list_models": "napari_neurosynth.bundle",
    "load_model": "napari_neurosynth.bundle",
    "synthesize": "napari_neurosynth.inference",
    "RatingStore": "napari_neurosynth.ratings",
    "NeurosynthError": "napari_neurosynth.errors",
    "CancelledError": "napari_neurosynth.errors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'napari_neurosynth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
