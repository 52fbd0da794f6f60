"""Shared fixtures. Phantoms are small (3 mm) so the suite stays fast on 2 cores.

``make_bundle`` builds tiny model bundles (random weights, a few thousand
parameters) for tests of plumbing rather than quality: the bundle format, the
widgets, the engine's slicing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_API", "pyqt6")
# pytest-qt picks its binding on its own (PYTEST_QT_API, else the first it can import);
# follow QT_API so that `QT_API=pyqt5 pytest ...` runs on PyQt5 throughout.
os.environ.setdefault("PYTEST_QT_API", os.environ["QT_API"])


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


# --------------------------------------------------------------------------- tiny bundles
#: Smallest sensible arguments per architecture; keyword arguments of ``make_bundle`` override them.
TINY_ARGS: dict[str, dict[str, Any]] = {
    "resnet": {"base": 4, "n_blocks": 1},
    "unet": {"base": 4, "depth": 2},
    "fusion": {"base": 4, "n_blocks": 1},
    "mcsr": {"base": 4, "n_blocks": 2},
}


def tiny_network(arch: str = "resnet", inputs: Sequence[str] = ("t1",), context: int = 1, seed: int = 0, **args: Any):
    """A small ``build_network`` generator whose channels fit ``inputs`` x (2 ``context`` + 1) slices."""
    import torch

    from napari_neurosynth.networks import build_network

    torch.manual_seed(seed)
    per = 2 * context + 1
    channels = {
        "resnet": {"in_channels": len(inputs) * per},
        "unet": {"in_channels": len(inputs) * per},
        "fusion": {"n_inputs": len(inputs), "channels_per_input": per},
        "mcsr": {"source_channels": per, "lowres_channels": per},
    }
    if arch not in channels:
        raise ValueError(f"no tiny configuration for architecture {arch!r}; add one to tests/conftest.py")
    return build_network(arch, **{**channels[arch], **TINY_ARGS[arch], **args})


def tiny_card(
    name: str = "tiny_t1_to_t2",
    inputs: Sequence[str] = ("t1",),
    output: str = "t2",
    context: int = 1,
    task: str = "cms",
    **extra: Any,
) -> dict[str, Any]:
    """The card fields a bundle needs (``save_bundle`` adds architecture and weights); ``extra`` adds more."""
    return {
        "name": name,
        "task": task,
        "inputs": list(inputs),
        "output": output,
        "slicing": {"plane": "axial", "context": context},
        **extra,
    }


class BundleFactory:
    """``make_bundle(root=None, name=..., arch=..., inputs=..., output=..., context=..., task=..., **args)``.

    Saves a tiny bundle to ``root / name`` (``root`` defaults to the test's
    ``tmp_path``) and returns its folder, or the loaded :class:`Model` with
    ``load=True``. ``**args`` go to ``build_network`` (over :data:`TINY_ARGS`);
    ``card`` adds or replaces card fields (e.g. ``training``, ``metrics``);
    ``network`` saves a given network instead of building one.
    ``make_bundle.network(...)`` and ``make_bundle.card(...)`` are the two halves.
    """

    network = staticmethod(tiny_network)
    card = staticmethod(tiny_card)

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def __call__(
        self,
        root: str | os.PathLike | None = None,
        name: str = "tiny_t1_to_t2",
        arch: str = "resnet",
        inputs: Sequence[str] = ("t1",),
        output: str = "t2",
        context: int = 1,
        task: str = "cms",
        *,
        card: dict[str, Any] | None = None,
        network: Any = None,
        seed: int = 0,
        load: bool = False,
        **args: Any,
    ):
        from napari_neurosynth.bundle import load_model, save_bundle

        net = network if network is not None else tiny_network(arch, inputs, context, seed=seed, **args)
        full_card = {**tiny_card(name, inputs, output, context, task), **(card or {})}
        folder = save_bundle(net, full_card, Path(root if root is not None else self.tmp_path) / name)
        return load_model(folder) if load else folder


@pytest.fixture
def make_bundle(tmp_path) -> BundleFactory:
    """Factory of tiny model bundles; see :class:`BundleFactory`."""
    return BundleFactory(tmp_path)
