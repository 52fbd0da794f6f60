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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for modules of tiny tensors.

    On 2 cores shared with other jobs, two OpenMP threads spinning against each
    other made these tests 10-30x slower than one thread.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
