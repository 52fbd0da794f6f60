"""metrics.evaluate: agreement with scikit-image, regions, k-space profile, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.io import Volume
from napari_neurosynth.metrics import evaluate, kspace_band_errors


def _pair(shape=(40, 44, 36), seed=0):
    rng = np.random.default_rng(seed)
    target = ndi.gaussian_filter(rng.random(shape), 2.0) * 5.0 + 1.0
    synth = target + rng.normal(0, 0.05, shape)
    mask = np.zeros(shape, bool)
    mask[8:32, 10:34, 6:30] = True
    return synth, target, mask


def _sk_ssim(s, t, data_range, full=False):
    return structural_similarity(
        t, s, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, full=full
    )


def test_psnr_ssim_match_scikit_image():
    s, t, mask = _pair()
    r = evaluate(s, t, mask=mask, normalize=False)
    R = t.max() - t.min()
    assert abs(r["psnr"] - peak_signal_noise_ratio(t, s, data_range=R)) < 1e-3
    assert abs(r["ssim"] - _sk_ssim(s, t, R)) < 1e-3
    assert r["regions"]["global"]["data_range"] == pytest.approx(R)

    # Brain rows: data range = target max - min inside the mask; SSIM = mean of the map inside it.
    Rb = t[mask].max() - t[mask].min()
    assert r["regions"]["brain"]["data_range"] == pytest.approx(Rb)
    assert abs(r["psnr_brain"] - peak_signal_noise_ratio(t[mask], s[mask], data_range=Rb)) < 1e-3
    _, smap = _sk_ssim(s, t, Rb, full=True)
    assert abs(r["ssim_brain"] - smap[mask].mean()) < 1e-3
    assert r["mae_brain"] == pytest.approx(np.abs(s - t)[mask].mean())
    assert r["nmse"] == pytest.approx(np.sum((s - t) ** 2) / np.sum(t**2))


def test_identical_volumes_are_perfect_and_zero_kspace_error():
    _, t, mask = _pair()
    r = evaluate(t.copy(), t, mask=mask, lesion=mask)
    assert r["psnr"] == float("inf") and r["ssim"] == pytest.approx(1.0)
    assert r["mae"] == 0 and r["nmse"] == 0 and r["ssim_lesion"] == pytest.approx(1.0)
    assert len(r["kspace"]) == 8
    assert all(b["rel_error"] == 0 for b in r["kspace"])
    json.dumps(r)  # JSON-serialisable for the CLI / export


def test_blurred_target_error_increases_with_frequency():
    rng = np.random.default_rng(1)
    t = ndi.gaussian_filter(rng.random((48, 48, 48)), 0.7)
    s = ndi.gaussian_filter(t, 0.8)
    bands = kspace_band_errors(s, t, spacing=(2.0, 2.0, 2.0), n_bands=6)
    errs = [b["rel_error"] for b in bands]
    assert all(b > a for a, b in itertools.pairwise(errs)), errs
    assert errs[0] < 0.1 and errs[-1] > 0.8
    # cycles/mm: Nyquist of 2 mm voxels is 0.25 cycles/mm
    assert bands[0]["low"] == 0 and bands[-2]["high"] == pytest.approx(0.25 * 5 / 6)
    assert sum(b["target_energy"] for b in bands) == pytest.approx(1.0)
    # Blur barely moves PSNR in the low-frequency-dominated image; the profile shows it.
    assert evaluate(s, t, normalize=False)["kspace"][-1]["rel_error"] > 0.8


def test_volume_spacing_sets_band_frequencies():
    _, t, _ = _pair((24, 24, 24))
    v = Volume(t, np.diag([3.0, 3.0, 3.0, 1.0]))
    r = evaluate(v, v.with_data(t * 1.0), n_bands=4)
    assert r["spacing"] == (3.0, 3.0, 3.0)
    assert r["kspace"][0]["high"] == pytest.approx(1 / 6 / 4)


def test_lesion_rows_and_normalize_option():
    s, t, mask = _pair()
    lesion = np.zeros(t.shape, np.uint8)
    lesion[15:20, 15:20, 15:20] = 3
    t2 = t + 0.5 * (lesion > 0)  # a bright lesion on the acquired image ...
    r = evaluate(s, t2, mask=mask, lesion=lesion, normalize=False)  # ... that the synthesis lacks
    assert r["mae_lesion"] > 3 * r["mae_brain"]  # the flattened lesion stands out
    assert r["regions"]["lesion"]["n_voxels"] == 125
    # A global scale mismatch disappears with the default normalize=True ...
    r_norm = evaluate(t * 0.001, t, mask=mask)
    r_raw = evaluate(t * 0.001, t, mask=mask, normalize=False)
    assert r_raw["mae"] > 1 and r_norm["mae"] < 1e-5 and r_norm["normalized"] and not r_raw["normalized"]
    # ... and the masks are keyword-only, so a brain mask and a lesion mask cannot be swapped by position.
    with pytest.raises(TypeError):
        evaluate(s, t2, mask, lesion)  # type: ignore[misc]


def test_normalize_default_is_shared_by_evaluate_difference_map_and_lesion_fidelity():
    import inspect

    from napari_neurosynth.explain import difference_map, lesion_fidelity
    from napari_neurosynth.metrics import NORMALIZE_DEFAULT

    for fn in (evaluate, difference_map, lesion_fidelity):
        params = inspect.signature(fn).parameters
        assert params["normalize"].default is NORMALIZE_DEFAULT is True, fn.__name__
        if "lesion" in params:
            assert params["lesion"].kind is inspect.Parameter.KEYWORD_ONLY, fn.__name__
        if fn is not difference_map:  # difference_map(synth, target, mask) is the public contract
            assert params["mask"].kind is inspect.Parameter.KEYWORD_ONLY, fn.__name__


def test_bad_inputs_raise_clear_errors():
    s, t, mask = _pair()
    with pytest.raises(NeurosynthError, match="different grids"):
        evaluate(s[:-1], t)
    with pytest.raises(NeurosynthError, match="different affines"):
        evaluate(Volume(s, np.eye(4)), Volume(t, np.diag([2.0, 1, 1, 1])))
    bad = s.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NeurosynthError, match="NaN or Inf"):
        evaluate(bad, t)
    with pytest.raises(NeurosynthError, match="3-D"):
        evaluate(s[0], t[0])
    with pytest.raises(NeurosynthError, match="empty"):
        evaluate(s, t, mask=np.zeros(t.shape))
    with pytest.raises(NeurosynthError, match="different grids"):
        evaluate(s, t, mask=mask[1:])


def test_cli_evaluate_table_json_csv_and_grid_error(tmp_path, capsys):
    from napari_neurosynth.cli import main
    from napari_neurosynth.io import write_volume

    s, t, mask = _pair((24, 26, 22))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {}
    for name, arr in {"synth": s, "target": t, "mask": mask.astype(np.uint8), "small": t[:-2]}.items():
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        write_volume(Volume(np.asarray(arr, np.float32) if name != "mask" else arr, affine), paths[name])

    assert (
        main(["evaluate", paths["synth"], paths["target"], "--mask", paths["mask"], "--csv", str(tmp_path / "m.csv")])
        == 0
    )
    out = capsys.readouterr().out
    assert "global" in out and "brain" in out and "k-space error profile" in out and "normalised" in out

    assert main(["evaluate", paths["synth"], paths["target"], "--mask", paths["mask"], "--json", "--no-normalize"]) == 0
    result = json.loads(capsys.readouterr().out)
    direct = evaluate(s.astype(np.float32), t.astype(np.float32), mask=mask, normalize=False)
    assert result["psnr_brain"] == pytest.approx(direct["psnr_brain"], abs=1e-3)
    assert result["ssim"] == pytest.approx(direct["ssim"], abs=1e-3)
    assert len(result["kspace"]) == 8 and result["kspace"][0]["low"] == 0
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("kind,name") and len(rows) == 1 + 2 + 8

    assert main(["evaluate", paths["small"], paths["target"]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different grids" in err


def test_one_export_policy_for_non_finite_numbers(tmp_path, capsys):
    """NaN/Inf are null in JSON and empty in CSV, in the library export and in `neurosynth evaluate`."""
    import csv

    from napari_neurosynth.cli import main
    from napari_neurosynth.export import write_csv, write_json
    from napari_neurosynth.io import write_volume
    from napari_neurosynth.metrics import export_result, result_rows

    _, t, mask = _pair((20, 20, 20))
    r = evaluate(t.copy(), t, mask=mask, kspace=False)
    assert r["psnr"] == float("inf")
    data = json.loads(export_result(r, tmp_path / "r.json", note="x").read_text())
    assert data["psnr"] is None and data["regions"]["brain"]["psnr"] is None and data["note"] == "x"
    export_result(r, tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))
    assert [row["name"] for row in rows] == ["global", "brain"] and rows[0]["psnr"] == "" and rows[0]["mae"] == "0.0"
    assert len(result_rows(r)) == 2

    # the CLI prints the same strict JSON (no Infinity/NaN tokens)
    path = str(tmp_path / "t.nii.gz")
    write_volume(Volume(t.astype(np.float32), np.eye(4)), path)
    assert main(["evaluate", path, path, "--json"]) == 0
    text = capsys.readouterr().out
    assert "Infinity" not in text and json.loads(text)["psnr"] is None

    # the helpers themselves: nested, numpy, atomic, clear error on an unwritable path
    write_json({"a": [np.float32("nan"), np.int64(2)]}, tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text()) == {"a": [None, 2]}
    assert write_csv([{"x": -np.inf, "y": [1, 2]}], tmp_path / "n.csv") == 1
    assert (tmp_path / "n.csv").read_text().splitlines() == ["x,y", ",1 2"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    with pytest.raises(NeurosynthError, match="cannot write"):
        write_json({}, tmp_path / "n.csv" / "x.json")  # under a file: unwritable
