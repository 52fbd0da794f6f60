"""Model bundles: save/load round trip, lookup by name, validation, pickle refusal, CLI."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from napari_neurosynth import list_models, load_model
from napari_neurosynth.bundle import find_models, read_card, save_bundle, verify_bundle
from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.networks import build_network

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _card(name="tiny_t1_to_t2", inputs=("t1",), context=1):
    return {
        "name": name,
        "version": "1.0",
        "task": "cms",
        "inputs": list(inputs),
        "output": "t2",
        "normalization": {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1},
        "slicing": {"plane": "axial", "context": context},
        "training": {"data": "napari-neurosynth phantom, seeds 0-3", "command": "neurosynth train ..."},
        "metrics": {"held_out": {"psnr": 25.5, "ssim": 0.88}, "baselines": {"identity": {"psnr": 14.2}}},
        "license": "BSD-3-Clause",
    }


@pytest.fixture
def env_models(tmp_path, monkeypatch):
    """An isolated search path: one env folder, an empty user folder."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("NEUROSYNTH_MODELS_PATH", str(root))
    monkeypatch.setattr("napari_neurosynth.bundle.user_models_dir", lambda: tmp_path / "user_models")
    return root


@pytest.fixture
def bundle(env_models, make_bundle):
    net = make_bundle.network("resnet", context=1)
    folder = make_bundle(env_models, network=net, card=_card())
    return folder, net


def test_save_writes_card_weights_and_readme(bundle):
    folder, net = bundle
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "card.json", "weights.safetensors"]
    card = json.loads((folder / "card.json").read_text())
    assert card["architecture"] == {"name": "resnet", "args": net.architecture["args"]}
    assert card["weights"]["file"] == "weights.safetensors"
    assert len(card["weights"]["sha256"]) == 64
    assert card["weights"]["n_parameters"] == sum(p.numel() for p in net.parameters())
    readme = (folder / "README.md").read_text()
    assert "phantom only" in readme and "t1" in readme and "psnr" in readme
    assert (folder / "weights.safetensors").stat().st_size < 1_000_000


def test_round_trip_by_path_card_and_name(bundle):
    folder, net = bundle
    net.eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    for ref in (folder, folder / "card.json", str(folder), "tiny_t1_to_t2"):
        model = load_model(ref)
        assert not model.network.training
        with torch.no_grad():
            assert torch.equal(model.network(x), expected)
    assert model.name == "tiny_t1_to_t2"
    assert model.source == "env"
    assert (model.inputs, model.output, model.task, model.context, model.plane) == (["t1"], "t2", "cms", 1, "axial")
    assert model.in_channels == 3 and model.size_divisor == 4
    text = model.describe()
    assert text.startswith("tiny_t1_to_t2: t1 -> t2 (task cms, resnet,")
    assert "phantom" in text and "psnr 25.5" in text


def test_list_models_and_first_match_wins(bundle, make_bundle, tmp_path, monkeypatch):
    folder, _ = bundle
    assert "tiny_t1_to_t2" in list_models()
    # a second folder later in the path with the same name does not shadow the first
    other = tmp_path / "other"
    make_bundle(other, arch="unet", depth=1, card=_card())
    make_bundle(other, "second", arch="unet", depth=1, card=_card("second"))
    monkeypatch.setenv("NEUROSYNTH_MODELS_PATH", os.pathsep.join([str(folder.parent), str(other)]))
    names = list_models()
    assert names == sorted(set(names)) and {"tiny_t1_to_t2", "second"} <= set(names)
    assert load_model("tiny_t1_to_t2").architecture == "resnet"
    info = {i.name: i for i in find_models()}["tiny_t1_to_t2"]
    assert info.path == folder and info.summary()["architecture"] == "resnet"


def test_unknown_name_lists_available(bundle):
    with pytest.raises(NeurosynthError, match=r"no model named 'nope'.*tiny_t1_to_t2"):
        load_model("nope")


def test_flipped_byte_is_checksum_error(bundle):
    folder, _ = bundle
    w = folder / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(NeurosynthError, match=r"checksum mismatch.*corrupt"):
        load_model(folder)


def test_missing_card_fields_are_named(bundle):
    folder, _ = bundle
    card = json.loads((folder / "card.json").read_text())
    del card["output"], card["slicing"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match="missing required field\\(s\\): output, slicing"):
        load_model(folder)


def test_unknown_architecture(bundle):
    folder, _ = bundle
    card = json.loads((folder / "card.json").read_text())
    card["architecture"]["name"] = "transformer"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match=r"unknown architecture 'transformer'.*resnet, unet, fusion, mcsr"):
        load_model(folder)


def test_weights_that_do_not_fit_the_architecture(bundle):
    folder, _ = bundle
    card = json.loads((folder / "card.json").read_text())
    card["architecture"]["args"]["base"] = 8  # weights were trained with base 4
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match=r"do not fit the card's architecture.*shape mismatch"):
        load_model(folder)


def test_card_channels_must_match_inputs_and_context(bundle):
    folder, _ = bundle
    card = json.loads((folder / "card.json").read_text())
    card["slicing"]["context"] = 0  # 1 input x 1 slice, but the network takes 3 channels
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match="takes 3 input channels but the card implies 1"):
        load_model(folder)


def test_save_rejects_inconsistent_card(tmp_path):
    net = build_network("resnet", in_channels=3, base=4, n_blocks=1)
    card = _card(inputs=("t1", "pd"))  # 2 inputs x 3 slices = 6 channels
    with pytest.raises(NeurosynthError, match="takes 3 input channels but the card implies 6"):
        save_bundle(net, card, tmp_path / "bad")
    card = _card()
    del card["task"]
    with pytest.raises(NeurosynthError, match="missing required field\\(s\\): task"):
        save_bundle(net, card, tmp_path / "bad")


def test_yaml_card_loads(bundle):
    import yaml

    folder, _ = bundle
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").unlink()
    (folder / "card.yaml").write_text(yaml.safe_dump(card))
    assert load_model(folder).name == "tiny_t1_to_t2"


class _Booby:
    """Unpickling this object creates a marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_checkpoint_refused_without_unpickling(tmp_path, env_models):
    marker = tmp_path / "UNPICKLED"
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "evil": _Booby(str(marker))}, ckpt)
    # sanity: the file really would run code if unpickled
    with pytest.raises(NeurosynthError, match=r"pickle-based checkpoint.*safetensors.*convert"):
        load_model(ckpt)
    assert not marker.exists()
    # a folder holding only such a file is refused too
    folder = tmp_path / "pt_bundle"
    folder.mkdir()
    (folder / "weights.pth").write_bytes(ckpt.read_bytes())
    with pytest.raises(NeurosynthError, match=r"refusing to load weights.pth"):
        load_model(folder)
    # a card pointing at a pickle is refused before the file is opened
    (folder / "card.json").write_text(
        json.dumps(
            {
                **_card(context=0),
                "weights": {"file": "weights.pth", "sha256": "0" * 64},
                "architecture": {"name": "resnet", "args": {"in_channels": 1}},
            }
        )
    )
    with pytest.raises(NeurosynthError, match=r"refusing to load weights.pth"):
        load_model(folder)
    assert not marker.exists()
    # and the marker mechanism works (so its absence above means something)
    pickle.loads(pickle.dumps(_Booby(str(marker))))
    assert marker.exists()


def test_safetensors_name_with_pickle_content_is_rejected(bundle):
    folder, _ = bundle
    w = folder / "weights.safetensors"
    torch.save({"x": torch.zeros(2)}, w)
    card = json.loads((folder / "card.json").read_text())
    import hashlib

    card["weights"]["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match="not a valid safetensors file"):
        load_model(folder)


def test_every_architecture_round_trips(tmp_path, make_bundle):
    x = torch.rand(1, 2, 16, 16)
    for name in ("unet", "fusion", "mcsr"):
        inputs = ("t1", "t2_lowres") if name == "mcsr" else ("t1", "pd")
        net = make_bundle.network(name, inputs, context=0).eval()
        folder = make_bundle(
            tmp_path, name, arch=name, inputs=inputs, context=0, network=net, card=_card(name, inputs=inputs, context=0)
        )
        model = load_model(folder)
        with torch.no_grad():
            assert torch.equal(model.network(x), net(x)), name


# --------------------------------------------------------------------------- CLI


def test_cli_models_list_json(bundle, capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    row = {r["name"]: r for r in rows}["tiny_t1_to_t2"]
    assert row["task"] == "cms" and row["inputs"] == ["t1"] and row["output"] == "t2"
    assert row["architecture"] == "resnet" and row["source"] == "env" and row["n_parameters"] > 0


def test_cli_models_list_table_and_show(bundle, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny_t1_to_t2" in out and "t1 -> t2" in out
    assert main(["models", "show", "tiny_t1_to_t2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == "t2"
    assert main(["models", "show", "tiny_t1_to_t2"]) == 0
    out = capsys.readouterr().out
    assert "# tiny_t1_to_t2" in out and "Inputs" in out
    assert main(["models", "verify", "tiny_t1_to_t2"]) == 0
    assert "OK" in capsys.readouterr().out


def test_cli_list_reports_broken_bundles(bundle, env_models, capsys):
    broken = env_models / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{not json")
    assert main(["models", "list"]) == 0
    captured = capsys.readouterr()
    assert "tiny_t1_to_t2" in captured.out
    assert "skipped" in captured.err and "broken" in captured.err and "not valid JSON" in captured.err


def test_cli_errors_are_one_line(bundle, capsys):
    assert main(["models", "show", "missing_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no model named 'missing_model'" in err


def test_cli_convert_trusted_checkpoint(tmp_path, capsys):
    net = build_network("resnet", in_channels=1, base=4, n_blocks=1).eval()
    ckpt = tmp_path / "gen.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, ckpt)
    card = _card(context=0)
    card["architecture"] = net.architecture
    (tmp_path / "card.json").write_text(json.dumps(card))
    out = tmp_path / "converted"
    assert main(["models", "convert", str(ckpt), "--card", str(tmp_path / "card.json"), "-o", str(out)]) == 0
    model = load_model(out)
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.network(x), net(x))
    # a checkpoint holding arbitrary objects is refused by the weights-only unpickler
    marker = tmp_path / "UNPICKLED"
    torch.save({"state_dict": net.state_dict(), "evil": _Booby(str(marker))}, ckpt)
    assert main(["models", "convert", str(ckpt), "--card", str(tmp_path / "card.json"), "-o", str(out)]) == 2
    assert not marker.exists()


# --------------------------------------------------------------------------- shipped


_SHIPPED = sorted(p.parent for p in (REPO / "models").glob("*/card.json"))


@pytest.mark.skipif(not _SHIPPED, reason="no shipped bundles in models/ yet")
@pytest.mark.parametrize("folder", _SHIPPED, ids=[p.name for p in _SHIPPED])
def test_shipped_bundle_loads_and_verifies(folder):
    result = verify_bundle(folder)
    assert result["ok"]
    card = read_card(folder)
    assert result["sha256"] == card["weights"]["sha256"]
    assert card["name"] in list_models()
    model = load_model(card["name"])
    assert model.path.resolve() == folder.resolve() or model.source != "shipped"
    assert "command" in card.get("training", {}), "shipped cards must record their training command"


def test_bundle_generators_mirror_networks():
    from napari_neurosynth import bundle, networks

    assert bundle.GENERATORS == networks.GENERATORS


def test_listing_models_does_not_import_torch():
    """`neurosynth models list` stays fast: finding bundles reads cards only."""
    import subprocess
    import sys

    code = (
        "import sys; from napari_neurosynth.bundle import list_models; list_models(); "
        "print('torch' in sys.modules, 'monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
