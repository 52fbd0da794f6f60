"""Packaging: the plugin is found by napari after an editable and after a wheel install.

The wheel test builds the project's wheel, unpacks it with pip into a folder that
is put first on ``sys.path`` of a fresh interpreter, and checks from there that
npe2 reads (and ``npe2 validate`` accepts) the manifest through the
``napari.manifest`` entry point, that the shipped model bundles and every module
of the source tree travel inside the wheel, and that the version comes from one
place. The manifest lives at the repository root (``napari.yaml``); the package's
``napari.yaml`` is a symlink to it.

The import-linter contracts in ``pyproject.toml`` list the core modules by name;
a test here keeps that list complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.parent.name for p in (ROOT / "models").glob("*/card.json"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCE_MODULES = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "napari_neurosynth").rglob("*.py") if "__pycache__" not in p.parts
)


def _npe2() -> str:
    return str(Path(sys.executable).with_name("npe2"))


def test_manifest_lives_at_the_repository_root():
    root_manifest = ROOT / "napari.yaml"
    package_manifest = ROOT / "napari_neurosynth" / "napari.yaml"
    assert root_manifest.is_file() and not root_manifest.is_symlink()
    # One file: the package entry is a relative link to the root one (editable installs read it there).
    assert package_manifest.is_symlink() and os.readlink(package_manifest) == "../napari.yaml"
    assert package_manifest.resolve() == root_manifest.resolve()
    ep = PYPROJECT["project"]["entry-points"]["napari.manifest"]["napari-neurosynth"]
    assert ep == "napari_neurosynth:napari.yaml"


def test_npe2_validate_editable_install():
    out = subprocess.run(
        [_npe2(), "validate", "--imports", "napari-neurosynth"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_editable_install_reads_the_root_manifest():
    from importlib.metadata import version

    from npe2 import PluginManifest

    from napari_neurosynth import __version__
    from napari_neurosynth._version import __version__ as written

    pm = PluginManifest.from_distribution("napari-neurosynth")
    assert pm.name == "napari-neurosynth"
    assert __version__ == written == version("napari-neurosynth") == pm.package_version
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]


def _core_modules() -> set[str]:
    """Top-level modules and subpackages of napari_neurosynth, except the viewer."""
    pkg = ROOT / "napari_neurosynth"
    names = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in pkg.glob("*/__init__.py")}
    return {f"napari_neurosynth.{n}" for n in names} - {"napari_neurosynth.viewer"}


def test_import_contracts_cover_every_core_module():
    """Each contract names every core module, so a new module is inside the Qt boundary from the start."""
    contracts = {c["id"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
    assert {"core-no-gui", "core-no-viewer"} <= set(contracts)
    expected = _core_modules()
    for cid in ("core-no-gui", "core-no-viewer"):
        listed = set(contracts[cid]["source_modules"])
        assert listed == expected, (
            f"pyproject [tool.importlinter] contract {cid!r}: add {sorted(expected - listed)}, "
            f"remove {sorted(listed - expected)}"
        )
    assert {"qtpy", "napari", "magicgui", "PyQt5", "PyQt6"} <= set(contracts["core-no-gui"]["forbidden_modules"])
    # The one allowed crossing: the demo launcher, imported lazily by `neurosynth demo`.
    for cid in ("core-no-gui", "core-no-viewer"):
        assert contracts[cid]["ignore_imports"] == ["napari_neurosynth.cli.demo -> napari_neurosynth.viewer.demo"]


def test_lint_imports_passes():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[lint]')")
    out = subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_manifest_contributions():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-neurosynth")
    assert pm.name == "napari-neurosynth"
    assert {w.display_name for w in pm.contributions.widgets} == {"Synthesize", "Compare & Explain", "Reader Study"}
    assert [s.key for s in pm.contributions.sample_data] == ["phantom"]
    patterns = pm.contributions.readers[0].filename_patterns
    assert {"*.nii.gz", "*.mgz", "*.nrrd", "*.mha", "*.dcm"} <= set(patterns)
    assert {tuple(w.layer_types) for w in pm.contributions.writers} == {("image",), ("labels",)}


def test_wheel_carries_manifest_and_shipped_models(tmp_path):
    assert SHIPPED, "no shipped bundle in models/"
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("napari_neurosynth-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    probe = """
import json, sys
sys.path.insert(0, sys.argv[1])
import napari_neurosynth
from importlib.metadata import distribution
from importlib.resources import files
from npe2 import PluginManifest
from napari_neurosynth.bundle import find_models
dist = distribution("napari-neurosynth")
(ep,) = [e for e in dist.entry_points if e.group == "napari.manifest"]
module, resource = ep.value.split(":")
pm = PluginManifest.from_distribution("napari-neurosynth")
manifest = files(module) / resource
print(json.dumps({
    "package": napari_neurosynth.__file__,
    "version": napari_neurosynth.__version__,
    "dist_version": dist.version,
    "dist": str(dist.locate_file("")),
    "manifest": str(manifest),
    "manifest_text": manifest.read_text(),
    "widgets": [w.display_name for w in pm.contributions.widgets],
    "models": {m.name: str(m.path) for m in find_models()},
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "NEUROSYNTH_MODELS_PATH"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # an empty user models folder
    out = subprocess.run(
        [sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(site))
    assert found["dist"].startswith(str(site))
    assert found["manifest"].startswith(str(site))
    # The wheel carries the root manifest's content as a real file inside the package.
    assert not Path(found["manifest"]).is_symlink()
    assert found["manifest_text"] == (ROOT / "napari.yaml").read_text()
    assert found["version"] == found["dist_version"]
    assert "Synthesize" in found["widgets"]
    assert sorted(found["models"]) == SHIPPED
    assert all(path.startswith(str(site)) for path in found["models"].values())
    # Every module of the source tree is in the wheel (a subpackage missing from
    # [tool.setuptools] packages would be left out silently).
    missing = [m for m in SOURCE_MODULES if not (site / m).is_file()]
    assert not missing, f"not in the wheel (add the package to [tool.setuptools] packages): {missing}"
    # `npe2 validate` from the wheel install: a fresh interpreter with only the wheel's copy first.
    validate = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "sys.argv = ['npe2', 'validate', '--imports', 'napari-neurosynth']; "
            "from npe2.cli import main; main()",
            str(site),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "valid" in validate.stdout


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_cards_say_phantom_and_name_their_command(name):
    card = json.loads((ROOT / "models" / name / "card.json").read_text())
    assert "phantom" in json.dumps(card["training"]).lower()
    assert card["training"]["command"].startswith("neurosynth train")
