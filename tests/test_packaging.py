"""The plugin is found by napari after an editable install and after a wheel install.

The wheel test builds the project's wheel, unpacks it with pip into a folder that
is put first on ``sys.path`` of a fresh interpreter, and checks from there that
npe2 reads the manifest through the ``napari.manifest`` entry point and that the
shipped model bundles travel inside the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.parent.name for p in (ROOT / "models").glob("*/card.json"))


def _npe2() -> str:
    return str(Path(sys.executable).with_name("npe2"))


def test_npe2_validate_editable_install():
    out = subprocess.run([_npe2(), "validate", "napari-neurosynth"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


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
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("napari_neurosynth-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
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
print(json.dumps({
    "package": napari_neurosynth.__file__,
    "dist": str(dist.locate_file("")),
    "manifest": str(files(module) / resource),
    "widgets": [w.display_name for w in pm.contributions.widgets],
    "models": {m.name: str(m.path) for m in find_models()},
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "NEUROSYNTH_MODELS_PATH"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # an empty user models folder
    out = subprocess.run([sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(site))
    assert found["dist"].startswith(str(site))
    assert found["manifest"].startswith(str(site))
    assert "Synthesize" in found["widgets"]
    assert sorted(found["models"]) == SHIPPED
    assert all(path.startswith(str(site)) for path in found["models"].values())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_cards_say_phantom_and_name_their_command(name):
    card = json.loads((ROOT / "models" / name / "card.json").read_text())
    assert "phantom" in json.dumps(card["training"]).lower()
    assert card["training"]["command"].startswith("neurosynth train")
