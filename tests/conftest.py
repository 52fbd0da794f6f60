"""Shared fixtures. Phantoms are small (3 mm) so the suite stays fast on 2 cores."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_API", "pyqt6")


@pytest.fixture(scope="session")
def phantom3():
    """A 3 mm phantom with all lesion kinds, seed 0 (shared; do not modify in place)."""
    from napari_neurosynth import make_phantom

    return make_phantom(seed=0, lesions=True, resolution=3.0)


@pytest.fixture(scope="session")
def phantom2():
    """A 2 mm phantom with all lesion kinds, seed 1 (shared; do not modify in place)."""
    from napari_neurosynth import make_phantom

    return make_phantom(seed=1, lesions=True, resolution=2.0)
