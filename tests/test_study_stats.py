"""Study statistics against published worked examples, plus `neurosynth study summary|export|import`."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.ratings import RatingStore
from napari_neurosynth.study_stats import (
    agreement,
    icc2,
    mean_ci,
    proportion_ci,
    rank_tests,
    summarize,
    turing_accuracy,
)

# Shrout, P. E. & Fleiss, J. L. (1979). Intraclass correlations: uses in assessing rater
# reliability. Psychological Bulletin 86(2), 420-428, Table 2: 6 targets rated by 4 judges.
# Table 4 of the paper gives ICC(2,1) = .29 and ICC(2,4) = .62.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
)

# Krippendorff, K. (2011). Computing Krippendorff's Alpha-Reliability, example C
# ("any number of observers, missing data"): 4 observers x 12 units, values 1-5, None = missing.
# The paper gives nominal alpha = 0.743 and interval alpha = 0.849; ordinal alpha = 0.815
# is the value the `krippendorff` package's own tests assert for this data.
KRIPPENDORFF_C = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _rows_from_matrix(raters_by_units, condition="acquired"):
    return [
        {"rater": f"r{i}", "case_id": f"u{j:02d}", "condition": condition, "score": v, "study": "s"}
        for i, row in enumerate(raters_by_units)
        for j, v in enumerate(row)
        if v is not None
    ]


def test_icc_matches_shrout_fleiss_table_2():
    result = icc2(SHROUT_FLEISS)
    assert round(result["icc2_1"], 2) == 0.29
    assert round(result["icc2_k"], 2) == 0.62
    # and through the rating-row path: targets become cases, judges become raters.
    # ICC does not need scores within 1-5, so the table's 1-10 values go in as they are.
    rows = _rows_from_matrix(SHROUT_FLEISS.T.tolist())
    a = agreement(rows)
    assert a["n_raters"] == 4 and a["icc_n_items"] == 6
    assert a["icc2_1"] == pytest.approx(result["icc2_1"])
    assert a["icc2_k"] == pytest.approx(result["icc2_k"])


def test_krippendorff_ordinal_matches_worked_example():
    a = agreement(_rows_from_matrix(KRIPPENDORFF_C))
    assert a["krippendorff_alpha_ordinal"] == pytest.approx(0.815, abs=5e-4)
    # units coded by only one observer (u11) carry no pairable values and are left out
    assert a["alpha_n_items"] == 11
    # ICC only uses the units every observer coded: u01 to u08
    assert a["icc_n_items"] == 8


@pytest.mark.parametrize(
    "k,n,wilson,exact",
    [
        # Newcombe, R. G. (1998). Two-sided confidence intervals for the single proportion:
        # comparison of seven methods. Statistics in Medicine 17, 857-872, Table I
        # (method 3 = Wilson score, method 5 = Clopper-Pearson "exact").
        (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
        (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
        (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
        (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
    ],
)
def test_binomial_ci_matches_newcombe_and_scipy(k, n, wilson, exact):
    got_w = proportion_ci(k, n, "wilson")
    got_e = proportion_ci(k, n, "clopper-pearson")
    assert got_w == pytest.approx(wilson, abs=1e-4)
    assert got_e == pytest.approx(exact, abs=1e-4)
    ref = stats.binomtest(k, n).proportion_ci(method="wilson")
    assert got_w == pytest.approx((ref.low, ref.high))


def test_mean_ci_is_student_t():
    values = [2, 3, 3, 4, 5, 4, 3]
    r = mean_ci(values)
    half = stats.t.ppf(0.975, 6) * np.std(values, ddof=1) / math.sqrt(7)
    assert r["mean"] == pytest.approx(np.mean(values))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert math.isnan(mean_ci([4])["ci_low"])
    assert mean_ci([4, 4])["ci_low"] == 4.0


def test_turing_accuracy_and_chance():
    rows = []
    # 40 acquired images, called real 30 times; 40 synthetic, called synthetic 22 times
    for i in range(40):
        rows.append(
            {
                "rater": "a",
                "case_id": f"c{i}",
                "condition": "acquired",
                "score": 4,
                "turing_choice": "real" if i < 30 else "synthetic",
            }
        )
        rows.append(
            {
                "rater": "a",
                "case_id": f"c{i}",
                "condition": "gan",
                "score": 3,
                "turing_choice": "synthetic" if i < 22 else "real",
            }
        )
    t = turing_accuracy(rows)
    assert (t["correct"], t["n"]) == (52, 80)
    assert t["accuracy"] == pytest.approx(0.65)
    assert t["p_vs_chance"] == pytest.approx(stats.binomtest(52, 80).pvalue)
    assert t["differs_from_chance"] is True
    gan = t["by_condition"]["gan"]
    assert (gan["correct"], gan["n"]) == (22, 40)
    assert gan["differs_from_chance"] is False  # 55 %: raters cannot tell this model from real


def test_rank_tests_pair_by_rater_and_case():
    rows = []
    rng = np.random.default_rng(0)
    for rater in ("a", "b", "c"):
        for i in range(15):
            real = int(rng.integers(3, 6))
            rows.append({"rater": rater, "case_id": f"c{i}", "condition": "acquired", "score": real})
            rows.append({"rater": rater, "case_id": f"c{i}", "condition": "bad", "score": max(1, real - 2)})
            rows.append({"rater": rater, "case_id": f"c{i}", "condition": "same", "score": real})
    tests = rank_tests(rows)
    assert tests["bad"]["n_pairs"] == 45 and tests["bad"]["median_difference"] == -2
    diffs = [max(1, r["score"] - 2) - r["score"] for r in rows if r["condition"] == "acquired"]
    assert tests["bad"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert tests["bad"]["wilcoxon_p"] < 1e-6
    assert tests["same"]["wilcoxon_p"] == 1.0  # identical scores: no evidence of a difference


def _fill_store(db):
    """3 raters x 8 cases x {acquired, good_model, poor_model}, with Turing choices."""
    rng = np.random.default_rng(1)
    truth = rng.integers(2, 6, size=8)
    with RatingStore(db) as store:
        for rater in ("r1", "r2", "r3"):
            for case in range(8):
                for cond, shift in (("acquired", 0), ("good_model", 0), ("poor_model", -1)):
                    score = int(np.clip(truth[case] + shift + rng.integers(-1, 2) * (rng.random() < 0.3), 1, 5))
                    choice = "real" if (cond == "acquired") ^ (rng.random() < 0.2) else "synthetic"
                    store.record(
                        rater,
                        f"case{case}",
                        cond,
                        score,
                        study="demo",
                        turing_choice=choice,
                        turing_confidence=3,
                        realism=score,
                    )
        store.record("r1", "case0", "acquired", 1, study="demo")  # a changed mind: only this one counts
        store.record("r9", "elsewhere", "acquired", 5)  # outside any study
    return db


def test_summary_of_a_store(tmp_path):
    db = _fill_store(tmp_path / "r.sqlite")
    with RatingStore(db) as store:
        rows = store.ratings(study="demo")
    s = summarize(rows)
    assert s["n_ratings"] == 72 and s["raters"] == ["r1", "r2", "r3"]
    assert s["conditions"] == ["acquired", "good_model", "poor_model"]
    acquired = [r["score"] for r in rows if r["condition"] == "acquired"]
    assert s["mos"]["acquired"]["mean"] == pytest.approx(np.mean(acquired))
    assert s["mos"]["acquired"]["n"] == 24
    assert s["mos"]["poor_model"]["mean"] < s["mos"]["good_model"]["mean"]
    assert set(s["mos_by_rater"]["r2"]) == {"acquired", "good_model", "poor_model"}
    assert 0.3 < s["agreement"]["icc2_1"] < 1 and s["agreement"]["icc2_k"] > s["agreement"]["icc2_1"]
    assert s["agreement"]["icc_n_items"] == 24
    assert s["turing"]["n"] == 71  # the changed rating has no Turing answer
    assert s["rank_tests"]["poor_model"]["wilcoxon_p"] < 0.05
    assert set(s["subscores"]["realism"]) == {"acquired", "good_model", "poor_model"}
    json.dumps(s)  # NaN-free, serialisable
    with pytest.raises(NeurosynthError, match="no ratings"):
        summarize([])


def test_cli_summary_export_import(tmp_path, capsys):
    db = _fill_store(tmp_path / "r.sqlite")
    plot = tmp_path / "mos.png"
    assert main(["study", "summary", "--db", str(db), "--study", "demo", "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "MOS per condition" in text and "ICC(2,1)" in text and "Krippendorff" in text
    assert "Real-vs-synthetic accuracy" in text and "poor_model" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    assert main(["study", "summary", "--db", str(db), "--json"]) == 0  # all ratings, study or not
    data = json.loads(capsys.readouterr().out)
    assert data["n_ratings"] == 73 and "r9" in data["raters"]
    # r9's lone rating outside the study does not empty the complete table ICC needs
    assert data["agreement"]["icc_raters"] == ["r1", "r2", "r3"] and data["agreement"]["icc_n_items"] == 24

    assert main(["study", "summary", "--db", str(db), "--study", "nope"]) == 2
    assert "has no ratings" in capsys.readouterr().err
    assert main(["study", "summary", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err

    out = tmp_path / "all.csv"
    assert main(["study", "export", "--db", str(db), "-o", str(out)]) == 0
    assert "wrote 74 ratings" in capsys.readouterr().out  # 72 + 1 superseded + 1 outside the study
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 74 and sum(r["is_current"] == "0" for r in rows) == 1
    assert main(["study", "export", "--db", str(db), "-o", str(tmp_path / "cur.json"), "--current-only"]) == 0
    assert len(json.loads((tmp_path / "cur.json").read_text())) == 73

    # the exported history imports into a fresh file and gives the same current ratings
    db2 = tmp_path / "copy.sqlite"
    assert main(["study", "import", "--db", str(db2), str(out)]) == 0
    with RatingStore(db) as a, RatingStore(db2) as b:

        def key(r):
            return (r["study"], r["rater"], r["case_id"], r["condition"], r["score"], r["turing_choice"])

        assert sorted(map(key, a.ratings()), key=str) == sorted(map(key, b.ratings()), key=str)
    bad = tmp_path / "bad.csv"
    bad.write_text("rater,case_id,condition,score\na,c1,acquired,4\na,c2,acquired,9\n")
    db3 = tmp_path / "bad.sqlite"
    assert main(["study", "import", "--db", str(db3), str(bad)]) == 2
    assert "rating #2: score must be an integer from 1 to 5" in capsys.readouterr().err
    with RatingStore(db3) as store:
        assert store.ratings(history=True) == []  # nothing written half-way
