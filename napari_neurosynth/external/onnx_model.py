"""ONNX bundles: a ``model.onnx`` run with onnxruntime, and exporting a torch bundle to one.

An ONNX bundle's card names the graph's input and output and their layout::

    "architecture": {"source": "onnx", "name": "onnx",
                     "args": {"in_channels": 3, "size_divisor": 4, "spatial_dims": 2}},
    "onnx": {"input_name": "input", "output_name": "output", "layout": "NCHW"},
    "weights": {"file": "model.onnx", "sha256": "..."}

``layout`` is ``NCHW`` (a 2-D slice model: the engine's slice plan feeds it, with the
card's 2.5-D context) or ``NCDHW`` (a 3-D model: sliding-window inference over the
card's ``slicing.patch_size``). onnxruntime runs it with the CUDA execution provider
when the installed onnxruntime has one and the engine runs on CUDA, else on the CPU.

ONNX graphs have no gradients here, so Grad-CAM is not available for them; the
Compare & Explain tab offers an occlusion map instead
(:func:`napari_neurosynth.explain.occlusion.occlusion_map`).

Examples
--------
>>> layout_rank("NCHW"), layout_rank("NCDHW")
(4, 5)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import NeurosynthError

__all__ = ["LAYOUTS", "ONNX_FILE", "OnnxNetwork", "export_onnx", "layout_rank", "onnx_spec"]

#: Layouts an ONNX card may declare.
LAYOUTS = ("NCHW", "NCDHW")
ONNX_FILE = "model.onnx"
INSTALL_HINT = "pip install 'napari-neurosynth[onnx]'"


def layout_rank(layout: str) -> int:
    """The tensor rank of a layout name."""
    return len(layout)


def onnx_spec(card: Mapping[str, Any], where: str) -> dict[str, str]:
    """The card's ``onnx`` entry, checked: input and output names and a known layout.

    Examples
    --------
    >>> onnx_spec({"onnx": {"input_name": "x", "output_name": "y", "layout": "NCHW"}}, "card")
    {'input_name': 'x', 'output_name': 'y', 'layout': 'NCHW'}
    >>> onnx_spec({"onnx": {"input_name": "x", "layout": "NHWC"}}, "card")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: card: an ONNX card needs "onnx": {"input_name", ...
    """
    spec = card.get("onnx")
    ok = (
        isinstance(spec, Mapping)
        and isinstance(spec.get("input_name"), str)
        and isinstance(spec.get("output_name"), str)
        and spec.get("layout") in LAYOUTS
    )
    if not ok:
        raise NeurosynthError(
            f'{where}: an ONNX card needs "onnx": {{"input_name", "output_name", "layout"}} with layout '
            f"one of {', '.join(LAYOUTS)}; see docs/bundle-format.md"
        )
    assert isinstance(spec, Mapping)
    return {"input_name": spec["input_name"], "output_name": spec["output_name"], "layout": spec["layout"]}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise NeurosynthError(f"this bundle holds an ONNX model, which needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


class OnnxNetwork(nn.Module):
    """An onnxruntime session that behaves like a generator ``nn.Module`` (no gradients).

    ``forward`` takes a float tensor in the card's layout and returns the graph's
    output as a float32 tensor on the input's device. The module has no parameters;
    ``in_channels``, ``size_divisor`` and ``spatial_dims`` come from the card and the
    graph. A deep copy shares the session (onnxruntime sessions are thread-safe and
    cannot be copied).
    """

    is_onnx = True

    def __init__(self, data: bytes, card: Mapping[str, Any], where: str):
        super().__init__()
        ort = _onnxruntime()
        spec = onnx_spec(card, where)
        args = (card.get("architecture") or {}).get("args") or {}
        self.input_name, self.output_name, self.layout = spec["input_name"], spec["output_name"], spec["layout"]
        self.spatial_dims = layout_rank(self.layout) - 2
        available = ort.get_available_providers()
        self.providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(data, providers=self.providers or None)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise NeurosynthError(f"{where}: {ONNX_FILE} is not a valid ONNX model ({str(exc)[:160]})") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if self.input_name not in inputs:
            raise NeurosynthError(
                f"{where}: the ONNX graph has no input {self.input_name!r} (it has {', '.join(inputs)}); "
                "fix onnx.input_name in the card"
            )
        if self.output_name not in outputs:
            raise NeurosynthError(
                f"{where}: the ONNX graph has no output {self.output_name!r} (it has {', '.join(outputs)}); "
                "fix onnx.output_name in the card"
            )
        shape = list(inputs[self.input_name].shape)
        if len(shape) != layout_rank(self.layout):
            raise NeurosynthError(
                f"{where}: the ONNX input {self.input_name!r} has rank {len(shape)} (shape {shape}) but the card's "
                f"layout {self.layout} needs rank {layout_rank(self.layout)}"
            )
        channels = shape[1] if isinstance(shape[1], int) else args.get("in_channels")
        self.in_channels = int(channels) if channels is not None else None
        self.size_divisor = int(args.get("size_divisor", 1))
        self.on_cuda = "CUDAExecutionProvider" in self.session.get_providers()

    def __deepcopy__(self, memo: dict[int, object]) -> OnnxNetwork:
        clone = copy.copy(self)
        memo[id(self)] = clone
        return clone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != layout_rank(self.layout):
            raise NeurosynthError(f"ONNX model expects {self.layout} input, got a tensor of shape {tuple(x.shape)}")
        arr = x.detach().float().cpu().numpy()
        (y,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(arr, np.float32)})
        return torch.from_numpy(np.asarray(y, np.float32)).to(x.device)


def export_onnx(model: Any, folder: str | Path, *, force: bool = False, opset: int = 17) -> Path:
    """Export a loaded torch bundle to an ONNX bundle folder (``model.onnx``, ``card.json``, ``README.md``).

    The graph takes ``input`` (``NCHW`` for slice models, ``NCDHW`` for 3-D ones) with
    dynamic batch and spatial sides and returns ``output``. The card keeps the
    original's inputs, output, normalisation, slicing and intensity transform (which
    stays outside the graph, applied by the engine as for the original), and records the
    original architecture under ``exported_from``. The folder is written atomically.

    Raises
    ------
    NeurosynthError
        An ONNX bundle given as the source, an existing folder without ``force``, or a
        network torch cannot export.
    """
    import io

    from ..atomic import atomic_dir
    from ..bundle import _sha256, render_readme
    from . import unwrap

    card = copy.deepcopy(dict(model.card))
    arch = dict(card.get("architecture") or {})
    if arch.get("source") == "onnx":
        raise NeurosynthError(f"model {model.name!r} is already an ONNX bundle")
    net = copy.deepcopy(unwrap(model.network)).eval().cpu()
    dims = int(getattr(net, "spatial_dims", 2))
    layout = "NCDHW" if dims == 3 else "NCHW"
    divisor = int(getattr(net, "size_divisor", 1) or 1)
    context = int((card.get("slicing") or {}).get("context", 0) or 0)
    channels = len(card["inputs"]) * (2 * context + 1)
    side = max(2 * divisor, 32 if dims == 2 else 16)
    example = torch.zeros((1, channels) + (side,) * dims)
    axes = {0: "batch", 2: "d0", 3: "d1"} if dims == 2 else {0: "batch", 2: "d0", 3: "d1", 4: "d2"}
    buf = io.BytesIO()
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that the TorchScript exporter is the legacy one
            torch.onnx.export(
                net,
                (example,),
                buf,  # type: ignore[arg-type]  # a file object works (torch's stub says path)
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": axes},
                opset_version=opset,
                dynamo=False,  # the dynamo exporter needs onnxscript, which is not a dependency
            )
    except Exception as exc:
        raise NeurosynthError(f"model {model.name!r}: torch could not export it to ONNX ({str(exc)[:200]})") from None
    data = buf.getvalue()
    card["architecture"] = {
        "source": "onnx",
        "name": "onnx",
        "args": {"in_channels": channels, "size_divisor": divisor, "spatial_dims": dims},
    }
    card["exported_from"] = {
        "name": model.name,
        "architecture": arch,
        "sha256": (card.get("weights") or {}).get("sha256"),
    }
    card["onnx"] = {"input_name": "input", "output_name": "output", "layout": layout, "opset": opset}
    n_parameters = int(sum(p.numel() for p in net.parameters()))
    card["weights"] = {"file": ONNX_FILE, "sha256": _sha256(data), "n_parameters": n_parameters}
    folder = Path(folder).expanduser()
    with atomic_dir(folder, force=force) as tmp:
        (tmp / ONNX_FILE).write_bytes(data)
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(render_readme(card), encoding="utf-8")
    return folder
