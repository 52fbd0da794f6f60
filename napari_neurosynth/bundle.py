"""Model bundles: a folder with ``card.json`` and ``weights.safetensors``.

A bundle is found by path or by name. Names are looked up, first match wins, in

1. the folders of ``$NEUROSYNTH_MODELS_PATH`` (``os.pathsep``-separated),
2. the user folder ``platformdirs.user_data_dir("napari-neurosynth")/models``,
3. the shipped bundles (package ``napari_neurosynth.shipped_models``, the
   repository's top-level ``models/`` folder).

Each of those folders holds one sub-folder per bundle. A bundle's name is its
card's ``name`` (its folder name if the card has none); the folder name is also
accepted when loading.

Loading never executes code from the bundle: weights are read with
``safetensors`` only, their sha256 is checked against the card before use, and
pickle-based files (``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) are refused without
being opened. See ``docs/bundle-format.md`` for the card reference.

Examples
--------
>>> from napari_neurosynth.networks import build_network
>>> import tempfile
>>> net = build_network("resnet", in_channels=1, base=4, n_blocks=1)
>>> card = {"name": "demo", "task": "cms", "inputs": ["t1"], "output": "t2",
...         "slicing": {"plane": "axial", "context": 0}}
>>> folder = save_bundle(net, card, tempfile.mkdtemp() + "/demo")
>>> load_model(folder).describe().splitlines()[0]
'demo: t1 -> t2 (task cms, resnet, 8,097 parameters)'
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from .errors import NeurosynthError

if TYPE_CHECKING:  # torch and MONAI take seconds to import; listing bundles needs neither
    import torch
    from torch import nn

#: Architecture names a bundle may use (mirrors networks.GENERATORS without importing torch).
GENERATORS = ("resnet", "unet", "fusion", "mcsr", "fgdl")

__all__ = [
    "BundleInfo",
    "BundleSummary",
    "CARD_FILES",
    "Card",
    "Model",
    "PICKLE_SUFFIXES",
    "REQUIRED_FIELDS",
    "find_models",
    "is_phantom_only",
    "list_models",
    "load_model",
    "models_search_path",
    "read_card",
    "save_bundle",
    "validate_card",
    "verify_bundle",
    "VerifyResult",
]

#: Card file names tried in a bundle folder, in order.
CARD_FILES = ("card.json", "card.yaml", "card.yml")
#: Card fields a loadable bundle must have.
REQUIRED_FIELDS = ("name", "task", "inputs", "output", "architecture", "normalization", "slicing", "weights")
#: File suffixes that hold pickles, which can run arbitrary code when loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS_FILE = "weights.safetensors"
PLANES = ("axial", "coronal", "sagittal")
_DEFAULT_NORMALIZATION = {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1}

_CONVERT_HINT = (
    "convert it in an environment where you trust the file: "
    "`sd = torch.load(path, weights_only=True)` (take sd['state_dict'] if nested); "
    "`safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, 'weights.safetensors')`; "
    "then write a card.json (see docs/bundle-format.md), "
    "or run `neurosynth models convert CHECKPOINT --card CARD.json -o FOLDER`"
)


# --------------------------------------------------------------------------- cards


class Card(TypedDict, total=False):
    """A bundle card (``card.json``); the fields are described in ``docs/bundle-format.md``.

    ``total=False``: a card being assembled (before :func:`save_bundle`) lacks
    fields; :func:`validate_card` checks that a loadable card has every one of
    :data:`REQUIRED_FIELDS`. A card read from disk is a plain ``dict`` at run
    time and keeps any further keys it has. Nested entries are mappings:
    ``architecture`` ``{"name", "args"}``, ``slicing`` ``{"plane", "context", ...}``,
    ``normalization`` ``{"method", ...}``, ``weights`` ``{"file", "sha256",
    "n_parameters"}``, ``training`` (data, command, recipe) and ``metrics``
    (``held_out``, ``baselines``, ...).
    """

    name: str
    task: str
    inputs: list[str]
    output: str
    architecture: dict[str, Any]
    normalization: dict[str, Any]
    slicing: dict[str, Any]
    weights: dict[str, Any]
    version: str
    description: str
    license: str
    trained_on: str
    training: dict[str, Any]
    metrics: dict[str, Any]
    limitations: list[str] | str


class BundleSummary(TypedDict):
    """One row of ``neurosynth models list --json`` (:meth:`BundleInfo.summary`)."""

    name: str
    task: str | None
    inputs: list[str] | None
    output: str | None
    architecture: str | None
    n_parameters: int | None
    source: str
    path: str


class VerifyResult(TypedDict):
    """What :func:`verify_bundle` returns for a sound bundle."""

    name: str
    path: str
    sha256: str
    n_parameters: int
    ok: bool


def read_card(path: str | os.PathLike[str]) -> Card:
    """Read a card (JSON, or YAML with ``yaml.safe_load``) from a file or bundle folder.

    Examples
    --------
    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "card.json").write_text(json.dumps({"name": "demo", "inputs": ["t1"]}))
    >>> read_card(folder)
    {'name': 'demo', 'inputs': ['t1']}
    >>> read_card(folder / "nowhere")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: cannot read model card .../nowhere: No such file or directory
    """
    path = Path(path)
    if path.is_dir():
        for name in CARD_FILES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise NeurosynthError(f"{path} is not a model bundle: it has no {' or '.join(CARD_FILES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NeurosynthError(f"cannot read model card {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            card = yaml.safe_load(text)
        else:
            card = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise NeurosynthError(f"model card {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(card, dict):
        raise NeurosynthError(f"model card {path} must hold a mapping (a JSON object), not {type(card).__name__}")
    return cast(Card, card)


def expected_in_channels(card: Mapping[str, Any]) -> int:
    """Input channels implied by a card: ``len(inputs) * (2 * context + 1)``.

    Examples
    --------
    >>> expected_in_channels({"inputs": ["t1", "t2"], "slicing": {"plane": "axial", "context": 1}})
    6
    """
    return len(card["inputs"]) * (2 * int(card["slicing"].get("context", 0)) + 1)


def validate_card(card: Mapping[str, Any], *, require_weights: bool = True, where: str = "model card") -> None:
    """Check a card's fields and their types; raise NeurosynthError naming every problem found.

    Parameters
    ----------
    card
        The card mapping.
    require_weights
        Whether the ``weights`` entry must be present (not yet when saving).
    where
        How to name the card in messages (usually its path).

    Examples
    --------
    >>> validate_card({"name": "x", "task": "cms", "inputs": ["t1"], "output": "t2"}, require_weights=False)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: model card is missing required field(s): architecture, normalization, ...
    >>> card = {"name": "x", "task": "cms", "inputs": [], "output": "t2", "normalization": {},
    ...         "architecture": {"name": "unet"}, "slicing": {"plane": "oblique", "context": 0}}
    >>> validate_card(card, require_weights=False, where="card.json")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: card.json is invalid: 'inputs' must be ...; 'slicing.plane' must be ...
    """
    required = [f for f in REQUIRED_FIELDS if require_weights or f != "weights"]
    missing = [f for f in required if f not in card]
    if missing:
        raise NeurosynthError(f"{where} is missing required field(s): {', '.join(missing)}; see docs/bundle-format.md")
    problems = []
    inputs = card["inputs"]
    if not (isinstance(inputs, list) and inputs and all(isinstance(i, str) and i for i in inputs)):
        problems.append("'inputs' must be a non-empty list of modality names")
    if not (isinstance(card["output"], str) and card["output"]):
        problems.append("'output' must be a modality name")
    arch = card["architecture"]
    if not (isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("args", {}), dict)):
        problems.append('\'architecture\' must be {"name": ..., "args": {...}}')
    elif arch.get("source", "neurosynth") != "neurosynth":
        from .external import validate_architecture

        validate_architecture(arch, where)  # a source's allow-list: pix2pix, monai, onnx
    elif arch["name"] not in GENERATORS:
        known = ", ".join(GENERATORS)
        raise NeurosynthError(f"{where}: unknown architecture {arch['name']!r}; known generator architectures: {known}")
    slicing = card["slicing"]
    if not isinstance(slicing, dict):
        problems.append('\'slicing\' must be {"plane": ..., "context": ...}')
    else:
        if slicing.get("plane", "axial") not in PLANES:
            problems.append(f"'slicing.plane' must be one of {', '.join(PLANES)}")
        ctx = slicing.get("context", 0)
        if not (isinstance(ctx, int) and not isinstance(ctx, bool) and ctx >= 0):
            problems.append("'slicing.context' must be an integer >= 0")
    if "intensity_transform" in card:
        from .external import validate_intensity_transform

        validate_intensity_transform(card["intensity_transform"], where)
    if not isinstance(card["normalization"], dict):
        problems.append('\'normalization\' must be a mapping (e.g. {"method": "percentile", "percentile": 99.5})')
    if require_weights:
        w = card["weights"]
        if not (isinstance(w, dict) and isinstance(w.get("file"), str) and isinstance(w.get("sha256"), str)):
            problems.append('\'weights\' must be {"file": "weights.safetensors", "sha256": ...}')
    if problems:
        raise NeurosynthError(f"{where} is invalid: " + "; ".join(problems))


# --------------------------------------------------------------------------- saving


def _state_dict_tensors(network: nn.Module) -> dict[str, torch.Tensor]:

    # safetensors needs contiguous, non-shared CPU tensors
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    from .atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def save_bundle(network: nn.Module, card: Mapping[str, Any], folder: str | os.PathLike[str]) -> Path:
    """Write ``network`` and ``card`` as a bundle folder; return the folder.

    Writes ``weights.safetensors`` (the state dict), ``card.json`` with
    ``card["weights"] = {"file", "sha256", "n_parameters"}`` filled in, and a
    human-readable ``README.md`` generated from the card. ``architecture`` is
    taken from ``network.architecture`` when the card has none;
    ``normalization`` defaults to the percentile method and ``slicing.context``
    to 0. The card passed in is not modified.

    Raises
    ------
    NeurosynthError
        Card fields missing or inconsistent with the network (architecture,
        input channel count), or the folder not writable.

    Examples
    --------
    >>> import tempfile
    >>> from napari_neurosynth.networks import build_network
    >>> net = build_network("unet", in_channels=3, base=4, depth=1)
    >>> card = {"name": "tiny", "task": "cms", "inputs": ["t1"], "output": "t2", "slicing": {"context": 1}}
    >>> folder = save_bundle(net, card, tempfile.mkdtemp() + "/tiny")
    >>> sorted(p.name for p in folder.iterdir())
    ['README.md', 'card.json', 'weights.safetensors']
    >>> saved = read_card(folder)
    >>> saved["architecture"]["name"], saved["weights"]["n_parameters"], card.get("weights")
    ('unet', 2773, None)
    >>> save_bundle(net, {**card, "inputs": ["t1", "t2"]}, tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: card: the network takes 3 input channels but the card implies 6 ...
    """
    from safetensors.torch import save

    card = cast(Card, copy.deepcopy(dict(card)))
    arch = getattr(network, "architecture", None)
    if "architecture" not in card:
        if arch is None:
            raise NeurosynthError(
                "card has no 'architecture' and the network has no architecture record; "
                "build it with napari_neurosynth.networks.build_network"
            )
        card["architecture"] = copy.deepcopy(arch)
    elif arch is not None and card["architecture"].get("name") != arch["name"]:
        raise NeurosynthError(
            f"card architecture {card['architecture'].get('name')!r} does not match the network ({arch['name']!r})"
        )
    card["architecture"].setdefault("args", {})
    card.setdefault("normalization", dict(_DEFAULT_NORMALIZATION))
    card.setdefault("slicing", {}).setdefault("context", 0)
    card["slicing"].setdefault("plane", "axial")
    card.setdefault("version", "1.0")
    validate_card(card, require_weights=False, where="card")
    _check_channels(network, card, "card")
    try:
        json.dumps(card)
    except TypeError as exc:
        raise NeurosynthError(f"card must be JSON-serialisable: {exc}") from None

    folder = Path(folder)
    tensors = _state_dict_tensors(network)
    data = save(tensors, metadata={"format": "pt", "architecture": card["architecture"]["name"]})
    n_parameters = sum(p.numel() for p in network.parameters())
    card["weights"] = {"file": WEIGHTS_FILE, "sha256": _sha256(data), "n_parameters": n_parameters}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / WEIGHTS_FILE, data)
        _atomic_write(folder / "card.json", (json.dumps(card, indent=2) + "\n").encode())
        _atomic_write(folder / "README.md", render_readme(card).encode())
    except OSError as exc:
        raise NeurosynthError(f"cannot write model bundle to {folder}: {exc.strerror or exc}") from None
    return folder


def is_phantom_only(card: Mapping[str, Any]) -> bool:
    """Whether a card says its model was trained on the synthetic phantom only.

    True if ``training.phantom_only`` is set, ``trained_on`` is ``"phantom"``, or
    ``training.data`` mentions the phantom (and ``training.real_data`` is not set).

    Examples
    --------
    >>> is_phantom_only({"trained_on": "phantom"}), is_phantom_only({"training": {"data": "phantom:0-7"}})
    (True, True)
    >>> is_phantom_only({"training": {"data": "BraTS 2021, 1,251 subjects"}}), is_phantom_only({})
    (False, False)
    """
    training = card.get("training") or {}
    if training.get("phantom_only") or card.get("trained_on") == "phantom":
        return True
    data = training.get("data")
    return isinstance(data, str) and "phantom" in data.lower() and not training.get("real_data")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def render_readme(card: Mapping[str, Any]) -> str:
    """A short model card for humans (Markdown) from a bundle card.

    Examples
    --------
    >>> text = render_readme({"name": "t1_to_t2", "task": "cms", "inputs": ["t1"], "output": "t2",
    ...                       "slicing": {"plane": "axial", "context": 1}, "trained_on": "phantom"})
    >>> print(text.splitlines()[0])
    # t1_to_t2
    >>> "Trained on the synthetic napari-neurosynth brain phantom only" in text
    True
    >>> [line for line in text.splitlines() if line.startswith("| Slicing")]
    ['| Slicing | axial slices, 1 context slice(s) each side (2.5-D) |']
    """
    name = card.get("name", "model")
    arch = card.get("architecture", {})
    slicing = card.get("slicing", {})
    lines = [f"# {name}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    if is_phantom_only(card):
        lines += [
            "> **Trained on the synthetic napari-neurosynth brain phantom only.** It demonstrates the tool; it",
            "> has never seen a real scan and must not be used for clinical or research conclusions. Train on",
            "> your own data with `neurosynth train` (see docs/models.md) and ship that bundle instead.",
            "",
        ]
    ctx = slicing.get("context", 0)
    lines += [
        "| | |",
        "|---|---|",
        f"| Task | {card.get('task', '?')} |",
        f"| Inputs (in order) | {', '.join(card.get('inputs', []))} |",
        f"| Output | {card.get('output', '?')} |",
        f"| Slicing | {slicing.get('plane', 'axial')} slices, {ctx} context slice(s) each side"
        f"{' (2.5-D)' if ctx else ''} |",
        f"| Architecture | `{arch.get('name', '?')}` {json.dumps(arch.get('args', {}))} |",
    ]
    w = card.get("weights", {})
    if "n_parameters" in w:
        lines.append(f"| Parameters | {w['n_parameters']:,} |")
    if arch.get("source", "neurosynth") != "neurosynth":
        lines.append(f"| Architecture source | {arch['source']} (see docs/bundle-format.md) |")
    if slicing.get("patch_size"):
        lines.append(f"| 3-D windows | {_fmt(slicing['patch_size'])}, overlap {_fmt(slicing.get('overlap', 0.25))} |")
    norm = card.get("normalization", {})
    lines.append(f"| Intensity normalisation | {_fmt(norm)} |")
    if card.get("intensity_transform"):
        lines.append(f"| Intensity transform | {_fmt(card['intensity_transform'])} (undone on the output) |")
    if card.get("version"):
        lines.append(f"| Version | {card['version']} |")
    if card.get("license"):
        lines.append(f"| License | {card['license']} |")
    lines.append("")
    lines += [
        "Inputs are divided by their normalisation scale (see docs/architecture.md); the output is in the",
        "target contrast's normalised units (1.0 is about the bright end of the target).",
        "",
    ]
    training = card.get("training") or {}
    if training:
        lines += ["## Training", ""]
        for key in ("data", "command"):
            if key in training:
                value = f"`{training[key]}`" if key == "command" else _fmt(training[key])
                lines.append(f"- **{key}**: {value}")
        for key, value in training.items():
            if key not in ("data", "command"):
                lines.append(f"- **{key}**: {_fmt(value)}")
        lines.append("")
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["## Metrics", ""]
        held = metrics.get("held_out")
        rows = {}
        if isinstance(held, dict):
            rows["this model (held out)"] = held
        for bname, bvals in (metrics.get("baselines") or {}).items():
            if isinstance(bvals, dict):
                rows[f"baseline: {bname}"] = bvals
        scalar_keys = sorted({k for r in rows.values() for k, v in r.items() if isinstance(v, (int, float))})
        if rows and scalar_keys:
            lines.append("| | " + " | ".join(scalar_keys) + " |")
            lines.append("|---|" + "---|" * len(scalar_keys))
            for label, r in rows.items():
                lines.append(f"| {label} | " + " | ".join(_fmt(r.get(k, "")) for k in scalar_keys) + " |")
            lines.append("")
        for key, value in metrics.items():
            if key not in ("held_out", "baselines"):
                lines.append(f"- **{key}**: {_fmt(value)}")
        if any(k not in ("held_out", "baselines") for k in metrics):
            lines.append("")
    limitations = card.get("limitations")
    if limitations:
        lines += ["## Limitations", ""]
        lines += [f"- {item}" for item in (limitations if isinstance(limitations, list) else [limitations])]
        lines.append("")
    if w.get("sha256"):
        lines += [f"Weights: `{w.get('file', WEIGHTS_FILE)}`, sha256 `{w['sha256']}` (checked on load).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- finding


@dataclass(frozen=True)
class BundleInfo:
    """A bundle found on disk, card read but weights not loaded."""

    name: str
    path: Path
    card: Card = field(repr=False)
    source: str  # "path", "env", "user" or "shipped"

    def summary(self) -> BundleSummary:
        """One JSON-ready row: name, task, inputs, output, architecture, parameters, where found.

        Examples
        --------
        >>> info = BundleInfo("demo", Path("models/demo"), {"task": "cms", "inputs": ["t1"], "output": "t2"}, "path")
        >>> row = info.summary()
        >>> row["inputs"], row["architecture"], row["n_parameters"], row["source"]
        (['t1'], None, None, 'path')
        """
        c = self.card
        return {
            "name": self.name,
            "task": c.get("task"),
            "inputs": c.get("inputs"),
            "output": c.get("output"),
            "architecture": (c.get("architecture") or {}).get("name"),
            "n_parameters": (c.get("weights") or {}).get("n_parameters"),
            "source": self.source,
            "path": str(self.path),
        }


def user_models_dir() -> Path:
    """``platformdirs.user_data_dir("napari-neurosynth") / "models"`` (may not exist)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-neurosynth")) / "models"


def shipped_models_dir() -> Path | None:
    """Folder of the shipped bundles, or None if the package data is missing."""
    try:
        root = resources.files("napari_neurosynth.shipped_models")
    except ModuleNotFoundError:
        return None
    # Installed as a plain directory (wheel or editable); zipped installs are not supported.
    path = Path(str(root))
    return path if path.is_dir() else None


def models_search_path() -> list[tuple[str, Path]]:
    """The folders searched for bundles by name, in order, each tagged with its source.

    Examples
    --------
    >>> [source for source, _ in models_search_path()][-2:]   # after any $NEUROSYNTH_MODELS_PATH entries
    ['user', 'shipped']
    """
    out: list[tuple[str, Path]] = []
    for entry in os.environ.get("NEUROSYNTH_MODELS_PATH", "").split(os.pathsep):
        if entry.strip():
            out.append(("env", Path(entry.strip()).expanduser()))
    out.append(("user", user_models_dir()))
    shipped = shipped_models_dir()
    if shipped is not None:
        out.append(("shipped", shipped))
    return out


def _card_file(folder: Path) -> Path | None:
    for name in CARD_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def find_models(problems: list[tuple[Path, str]] | None = None) -> list[BundleInfo]:
    """All bundles in the search path, first occurrence of each name, sorted by name.

    Only cards are read, not weights. Folders whose card cannot be read are
    skipped so one broken bundle does not hide the others; pass a list as
    ``problems`` to receive ``(folder, message)`` for each of them.
    """
    found: dict[str, BundleInfo] = {}
    for source, root in models_search_path():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            card_path = _card_file(folder)
            if card_path is None:
                continue
            try:
                card = read_card(card_path)
            except NeurosynthError as exc:
                if problems is not None:
                    problems.append((folder, str(exc)))
                continue
            name = str(card.get("name") or folder.name)
            if name not in found:
                found[name] = BundleInfo(name, folder, card, source)
    return [found[k] for k in sorted(found)]


def list_models() -> list[str]:
    """Names of all bundles found in the search path (sorted, unique).

    Examples
    --------
    >>> names = list_models()
    >>> "t1_to_t2" in names, names == sorted(set(names))   # a shipped bundle; sorted and unique
    (True, True)
    """
    return [info.name for info in find_models()]


def _find_by_name(name: str) -> BundleInfo:
    for source, root in models_search_path():
        if not root.is_dir():
            continue
        folder = root / name
        if folder.is_dir() and _card_file(folder) is not None:
            card = read_card(folder)
            return BundleInfo(str(card.get("name") or name), folder, card, source)
    for info in find_models():
        if info.name == name:
            return info
    available = list_models()
    hint = (
        f"available: {', '.join(available)}"
        if available
        else ("no bundles were found; put bundle folders in $NEUROSYNTH_MODELS_PATH or " + str(user_models_dir()))
    )
    raise NeurosynthError(f"no model named {name!r}; {hint}")


def _refuse_pickle(path: Path) -> None:
    raise NeurosynthError(
        f"refusing to load {path.name}: it is a pickle-based checkpoint ({path.suffix}), and loading a pickle "
        f"can run arbitrary code; model bundles hold safetensors weights only. To {_CONVERT_HINT}"
    )


def _resolve(name_or_path: str | os.PathLike[str]) -> BundleInfo:
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES and not path.is_dir():
        _refuse_pickle(path)  # checked before touching the file, even if it does not exist
    if path.is_file():
        if path.name not in CARD_FILES:
            raise NeurosynthError(
                f"{path} is neither a bundle folder nor a card file ({', '.join(CARD_FILES)}); pass the bundle folder"
            )
        card = read_card(path)
        return BundleInfo(str(card.get("name") or path.parent.name), path.parent, card, "path")
    if path.is_dir():
        if _card_file(path) is None:
            pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickles:
                _refuse_pickle(pickles[0])
            raise NeurosynthError(f"{path} is not a model bundle: it has no card.json")
        card = read_card(path)
        return BundleInfo(str(card.get("name") or path.name), path, card, "path")
    looks_like_path = os.sep in str(name_or_path) or (os.altsep and os.altsep in str(name_or_path))
    if looks_like_path:
        raise NeurosynthError(f"model bundle {path} does not exist")
    return _find_by_name(str(name_or_path))


# --------------------------------------------------------------------------- loading


def _read_weights(info: BundleInfo) -> tuple[dict[str, torch.Tensor], str]:
    """Read and checksum the weights; return (state dict, sha256)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    wpath = info.path / info.card["weights"]["file"]
    data = _checked_bytes(info)
    digest = _sha256(data)
    try:
        return load(data), digest
    except SafetensorError as exc:
        raise NeurosynthError(f"model {info.name!r}: {wpath.name} is not a valid safetensors file ({exc})") from None


def _checked_bytes(info: BundleInfo) -> bytes:
    """The weights file's bytes (safetensors or ONNX), after checking their sha256 against the card."""
    wcard = info.card["weights"]
    wpath = info.path / wcard["file"]
    if wpath.suffix.lower() in PICKLE_SUFFIXES:
        _refuse_pickle(wpath)
    if not wpath.is_file():
        raise NeurosynthError(f"model {info.name!r}: weights file {wpath} is missing")
    data = wpath.read_bytes()
    digest = _sha256(data)
    expected = wcard["sha256"].lower()
    if digest != expected:
        raise NeurosynthError(
            f"model {info.name!r}: checksum mismatch for {wpath.name} (card expects sha256 {expected[:12]}..., "
            f"file has {digest[:12]}...); the file may be corrupt, truncated or edited: re-copy or re-export the bundle"
        )
    return data


def _network_for(info: BundleInfo, where: str) -> tuple[nn.Module, str]:
    """The bundle's network with its weights (ONNX: an onnxruntime session), and the weights' sha256.

    A card's ``intensity_transform`` is applied around the network here, once, so every
    caller (engine, reference loop, Grad-CAM, uncertainty) runs the same thing.
    """
    from .external import architecture_source, wrap_intensity

    if architecture_source(info.card) == "onnx":
        from .external.onnx_model import OnnxNetwork

        data = _checked_bytes(info)
        network: nn.Module = OnnxNetwork(data, info.card, where)
        _check_channels(network, info.card, where)
        digest = _sha256(data)
    else:
        network = _build_from_card(info.card, where)
        state, digest = _read_weights(info)
        _load_state(network, state, info.name)
    return wrap_intensity(network, info.card, where), digest


def _check_channels(network: nn.Module, card: Mapping[str, Any], where: str) -> None:
    expected = expected_in_channels(card)
    got = getattr(network, "in_channels", None)
    if got is not None and got != expected:
        ctx = card["slicing"].get("context", 0)
        raise NeurosynthError(
            f"{where}: the network takes {got} input channels but the card implies {expected} "
            f"({len(card['inputs'])} input(s) x {2 * ctx + 1} slice(s) for context {ctx}); fix architecture.args"
        )


def _build_from_card(card: Mapping[str, Any], where: str) -> nn.Module:
    from .networks import build_network

    arch = card["architecture"]
    if arch.get("source", "neurosynth") != "neurosynth":
        from .external import build_external

        network = build_external(card, where)  # pix2pix or an allow-listed MONAI class
        _check_channels(network, card, where)
        return network
    try:
        network = build_network(arch["name"], **arch.get("args", {}))
    except NeurosynthError as exc:
        raise NeurosynthError(f"{where}: {exc}") from None
    _check_channels(network, card, where)
    return network


def state_mismatch(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``own`` missing from ``state``, keys of ``state`` not in ``own``, and shape mismatches.

    The one comparison behind loading a bundle's weights and importing a foreign checkpoint.
    """
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, wrong


def _load_state(network: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    missing, unexpected, wrong = state_mismatch(network.state_dict(), state)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:2])} (file vs architecture)")
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing, e.g. {', '.join(missing[:2])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:2])}")
        raise NeurosynthError(
            f"model {name!r}: the weights do not fit the card's architecture ({'; '.join(parts)}); "
            "the card's architecture.args must be those the weights were trained with"
        )
    network.load_state_dict(state, strict=True)


@dataclass
class Model:
    """A loaded model bundle.

    Attributes
    ----------
    card
        The card (a dict, typed as :class:`Card`), as read from ``card.json``.
    network
        The generator, in eval mode, on ``device``.
    path
        The bundle folder.
    name
        Bundle name (card ``name``).
    source
        Where it was found: ``"path"``, ``"env"``, ``"user"`` or ``"shipped"``.

    Examples
    --------
    >>> import tempfile
    >>> from napari_neurosynth.networks import build_network
    >>> net = build_network("unet", in_channels=3, base=4, depth=1)
    >>> card = {"name": "tiny", "task": "cms", "inputs": ["t1"], "output": "t2", "slicing": {"context": 1}}
    >>> folder = save_bundle(net, card, tempfile.mkdtemp() + "/tiny")
    >>> model = load_model(folder)
    >>> model.inputs, model.output, model.task, model.context, model.plane
    (['t1'], 't2', 'cms', 1, 'axial')
    >>> model.architecture, model.in_channels, model.size_divisor, model.n_parameters, model.phantom_only
    ('unet', 3, 2, 2773, False)
    >>> model.normalization
    {'method': 'percentile', 'percentile': 99.5, 'foreground_fraction': 0.1}
    """

    card: Card
    network: nn.Module
    path: Path
    name: str
    source: str = "path"

    @property
    def inputs(self) -> list[str]:
        """Input modalities, in the order the network takes them."""
        return list(self.card["inputs"])

    @property
    def output(self) -> str:
        return self.card["output"]

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def context(self) -> int:
        """Neighbouring slices on each side fed with each input (0 = plain 2-D)."""
        return int(self.card["slicing"].get("context", 0))

    @property
    def plane(self) -> str:
        return self.card["slicing"].get("plane", "axial")

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.card.get("normalization") or _DEFAULT_NORMALIZATION)

    @property
    def architecture(self) -> str:
        return self.card["architecture"]["name"]

    @property
    def in_channels(self) -> int:
        return expected_in_channels(self.card)

    @property
    def size_divisor(self) -> int:
        return int(getattr(self.network, "size_divisor", 1))

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    @property
    def phantom_only(self) -> bool:
        """Whether the card says the model was trained on the synthetic phantom only."""
        return is_phantom_only(self.card)

    def describe(self) -> str:
        """A short human summary (a few lines), e.g. for tooltips.

        Examples
        --------
        >>> import tempfile
        >>> from napari_neurosynth.networks import build_network
        >>> net = build_network("unet", in_channels=3, base=4, depth=1)
        >>> card = {"name": "tiny", "task": "cms", "inputs": ["t1"], "output": "t2", "slicing": {"context": 1},
        ...         "trained_on": "phantom", "metrics": {"held_out": {"psnr_brain": 24.31, "ssim_brain": 0.9048}}}
        >>> print(load_model(save_bundle(net, card, tempfile.mkdtemp() + "/tiny")).describe())
        tiny: t1 -> t2 (task cms, unet, 2,773 parameters)
        axial slices, 1 context slice(s) each side; trained on the synthetic phantom only
        held-out: psnr_brain 24.31, ssim_brain 0.9048
        """
        lines = [
            f"{self.name}: {' + '.join(self.inputs)} -> {self.output} "
            f"(task {self.task}, {self.architecture}, {self.n_parameters:,} parameters)"
        ]
        second = f"{self.plane} slices, {self.context} context slice(s) each side"
        patch = self.card["slicing"].get("patch_size")
        if patch:  # a 3-D patch model
            second = f"3-D windows of {' x '.join(str(p) for p in patch)} voxels"
        if self.phantom_only:
            second += "; trained on the synthetic phantom only"
        lines.append(second)
        held = (self.card.get("metrics") or {}).get("held_out")
        if isinstance(held, dict):
            vals = [
                f"{k} {_fmt(v)}" for k, v in held.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            if vals:
                lines.append("held-out: " + ", ".join(vals[:4]))
        return "\n".join(lines)


def load_model(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Model:
    """Load a model bundle by path or name, verifying its checksum.

    Parameters
    ----------
    name_or_path
        A bundle folder, its ``card.json``, or a name from :func:`list_models`.
    device
        Where to put the network (default CPU; the inference engine moves it).

    Returns
    -------
    Model
        With ``.card``, ``.network`` (eval mode), ``.path``, ``.name``, ``.inputs``,
        ``.output``, ``.task``, ``.context``, ``.plane`` and ``describe()``.

    Raises
    ------
    NeurosynthError
        Unknown name (lists the available ones), missing card fields, unknown
        architecture, checksum mismatch, weights that do not fit the
        architecture, or a pickle-based checkpoint (refused without unpickling).

    Examples
    --------
    A shipped bundle, by name:

    >>> model = load_model("t1_to_t2")
    >>> model.inputs, model.output, model.network.training
    (['t1'], 't2', False)

    A bundle folder whose weights were changed after the card was written:

    >>> import tempfile
    >>> from napari_neurosynth.networks import build_network
    >>> net = build_network("unet", in_channels=3, base=4, depth=1)
    >>> card = {"name": "tiny", "task": "cms", "inputs": ["t1"], "output": "t2", "slicing": {"context": 1}}
    >>> folder = save_bundle(net, card, tempfile.mkdtemp() + "/tiny")
    >>> weights = folder / "weights.safetensors"
    >>> data = bytearray(weights.read_bytes()); data[-1] ^= 1
    >>> _ = weights.write_bytes(bytes(data))
    >>> load_model(folder)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: model 'tiny': checksum mismatch for weights.safetensors ...
    >>> load_model(folder / "model.pth")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: refusing to load model.pth: it is a pickle-based checkpoint (.pth), ...
    """
    info = _resolve(name_or_path)
    where = f"model card {info.path}"
    validate_card(info.card, where=where)
    network, _ = _network_for(info, where)
    network.eval()
    network.to(device)
    return Model(card=info.card, network=network, path=info.path, name=info.name, source=info.source)


def verify_bundle(name_or_path: str | os.PathLike[str]) -> VerifyResult:
    """Check a bundle without keeping it: card, checksum and weight shapes.

    Returns a JSON-ready dict (name, path, sha256, n_parameters, ok=True); raises
    NeurosynthError describing the first problem.

    Examples
    --------
    >>> import tempfile
    >>> from napari_neurosynth.networks import build_network
    >>> net = build_network("unet", in_channels=3, base=4, depth=1)
    >>> card = {"name": "tiny", "task": "cms", "inputs": ["t1"], "output": "t2", "slicing": {"context": 1}}
    >>> folder = save_bundle(net, card, tempfile.mkdtemp() + "/tiny")
    >>> result = verify_bundle(folder)
    >>> result["name"], result["n_parameters"], result["ok"], len(result["sha256"])
    ('tiny', 2773, True, 64)
    """
    info = _resolve(name_or_path)
    where = f"model card {info.path}"
    validate_card(info.card, where=where)
    network, digest = _network_for(info, where)
    return {
        "name": info.name,
        "path": str(info.path),
        "sha256": digest,
        "n_parameters": sum(p.numel() for p in network.parameters()),
        "ok": True,
    }
