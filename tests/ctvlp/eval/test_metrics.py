"""ctvlp.eval.metrics against hand-computed cases (the arithmetic is in the comments).

Grid: t_k = k / 99, k = 0..99 (np.linspace(0, 1, 100)); prediction = score > t (strict).
No score below is a multiple of 1/99, so no score sits exactly on a grid point.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from ctvlp.diseases import SYNTHETIC
from ctvlp.eval.metrics import (
    anatomy_map,
    default_anatomy_map,
    EvalResult,
    evaluate,
    find_threshold,
    frames_from_arrays,
    main,
    metrics_at_threshold,
    validate_tables,
)

# Case A (ties in scores). Negatives {0.1, 0.3, 0.3, 0.6}, positives {0.3, 0.7, 0.9}.
# AUC = P(pos > neg) + 0.5 P(tie) over 3 x 4 = 12 pairs:
#   pos 0.3: beats 0.1 (1), ties 0.3 twice (0.5 + 0.5), loses to 0.6  -> 2
#   pos 0.7: beats all 4 -> 4;  pos 0.9: beats all 4 -> 4           -> AUC = 10/12
# ROC distance d = sqrt((1-TPR)^2 + FPR^2) by threshold region:
#   t < 0.1: TPR 1,   FPR 1   -> 1
#   [0.1, 0.3): TPR 1,   FPR 3/4 -> 0.75
#   [0.3, 0.6): TPR 2/3, FPR 1/4 -> sqrt(1/9 + 1/16) = 5/12
#   [0.6, 0.7): TPR 2/3, FPR 0   -> 1/3   <- minimum, grid k = 60..69 (59.4 < k < 69.3)
#   [0.7, 0.9): TPR 1/3 -> 2/3;  t >= 0.9: 1
# Ties go to the larger threshold: t = 69/99 (a strict '<' scan would give 60/99).
# At t = 69/99: TP 2, FN 1, FP 0, TN 4 -> SE 2/3, SP 1, ACC 6/7, balanced (2/3 + 1)/2 = 5/6,
# precision 2/2 = 1. Weighted F1: class 1: P 1, R 2/3 -> F1 4/5; class 0: predicted negatives
# {0.1, 0.3, 0.3, 0.6 | pos 0.3}: P 4/5, R 1 -> F1 8/9; weighted (4 * 8/9 + 3 * 4/5) / 7 = 268/315.
A_LABELS = [0, 0, 0, 0, 1, 1, 1]
A_SCORES = [0.1, 0.3, 0.3, 0.6, 0.3, 0.7, 0.9]
A_EXPECTED = {"auc": 10 / 12, "threshold": 69 / 99, "sensitivity": 2 / 3, "specificity": 1.0,
              "accuracy": 6 / 7, "balanced_accuracy": 5 / 6, "f1_weighted": 268 / 315, "precision": 1.0}

# Case B (a tie between two separate ROC points). Negatives {0.2, 0.75}, positives {0.65, 0.95}.
# AUC: 0.65 beats 0.2 (1); 0.95 beats both (2) -> 3/4.
#   [0.2, 0.65): TPR 1, FPR 1/2 -> 0.5;  [0.65, 0.75): TPR 1/2, FPR 1/2 -> 0.707
#   [0.75, 0.95): TPR 1/2, FPR 0 -> 0.5  -> tie with [0.2, 0.65); larger wins: k = 94 (94.05 > k)
# Own threshold 94/99: TP 1, FN 1, FP 0, TN 2 -> SE 1/2, SP 1, ACC 3/4.
# Held-out threshold from case A (69/99 ~ 0.697): predictions [0, 1, 0, 1] on scores
# [0.2, 0.75, 0.65, 0.95] -> TP 1, FN 1, FP 1, TN 1 -> SE 1/2, SP 1/2, ACC 1/2, precision 1/2.
B_LABELS = [0, 0, 1, 1]
B_SCORES = [0.2, 0.75, 0.65, 0.95]


def frames(columns: dict[str, tuple[list, list]], ids=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels and scores DataFrames from {disease: (labels, scores)} (lists padded with NaN)."""
    n = max(len(v[0]) for v in columns.values())
    ids = ids or [f"scan_{i}" for i in range(n)]
    pad = lambda xs: list(xs) + [np.nan] * (n - len(xs))  # noqa: E731
    lab = np.array([pad(v[0]) for v in columns.values()], dtype=float).T
    sco = np.array([pad(v[1]) for v in columns.values()], dtype=float).T
    return frames_from_arrays(ids, list(columns), lab, sco)


def test_case_a_hand_computed():
    y, s = np.array(A_LABELS), np.array(A_SCORES)
    assert roc_auc_score(y, s) == pytest.approx(10 / 12)
    assert find_threshold(s, y) == pytest.approx(69 / 99)
    got = metrics_at_threshold(s, y, find_threshold(s, y))
    for key, value in got.items():
        assert value == pytest.approx(A_EXPECTED[key]), key


def test_ties_go_to_the_larger_threshold():
    # Case A: the whole run k = 60..69 is tied; case B: two separate ROC points tie.
    assert find_threshold(np.array(A_SCORES), np.array(A_LABELS)) == pytest.approx(69 / 99)
    assert find_threshold(np.array(B_SCORES), np.array(B_LABELS)) == pytest.approx(94 / 99)


def test_prediction_is_strictly_above_the_threshold():
    # Scores exactly on grid points t_30 and t_60 (negative, positive). score > t separates them
    # perfectly (d = 0) for k = 30..59 -> largest is 59/99. With '>=' it would be k = 31..60 -> 60/99.
    grid = np.linspace(0, 1, 100)
    s, y = np.array([grid[30], grid[60]]), np.array([0, 1])
    assert find_threshold(s, y) == grid[59]
    # A score equal to the threshold is predicted negative: SE 0 (positive at t), SP 1.
    assert metrics_at_threshold(s, y, grid[60])["sensitivity"] == 0.0


def _peer_find_threshold(probabilities, true_labels):
    """The released calc_metrics.py loop (CT-CLIP protocol), verbatim modulo names."""
    best_threshold, best_roc = 0, 10000
    for threshold in np.linspace(0, 1, 100):
        predictions = (probabilities > threshold).astype(int)
        confusion = confusion_matrix(true_labels, predictions, labels=[0, 1])
        tp, tn, fp, fn = confusion[1, 1], confusion[0, 0], confusion[0, 1], confusion[1, 0]
        current = math.sqrt((1 - tp / (tp + fn)) ** 2 + (fp / (fp + tn)) ** 2)
        if current <= best_roc:
            best_roc, best_threshold = current, threshold
    return best_threshold


@pytest.mark.parametrize("seed", range(6))
def test_find_threshold_matches_the_peer_loop(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.3).astype(int)
    y[:2] = [0, 1]
    s = np.round(np.clip(0.25 * y + rng.random(60) * 0.75, 0, 1), 1)  # 1 decimal: many ties
    assert find_threshold(s, y) == _peer_find_threshold(s, y)


def test_evaluate_per_disease_and_per_anatomy_tables():
    lab, sco = frames({"A": (A_LABELS, A_SCORES), "B": (B_LABELS, B_SCORES)})
    res = evaluate(lab, sco, {"A": "lung", "B": "lung"}, n_bootstrap=0)
    row = res.per_disease.loc["A"]
    for key, value in A_EXPECTED.items():
        assert row[key] == pytest.approx(value), key
    assert res.per_disease.loc["B", "threshold"] == pytest.approx(94 / 99)
    assert res.per_disease.loc["B", "specificity"] == 1.0
    # B is padded with 3 NaN rows (7 scans, 4 evaluated): skipped and counted.
    assert res.per_disease.loc["B", ["n_evaluated", "n_skipped"]].tolist() == [4, 3]
    # Anatomy 'lung' = mean over its diseases: AUC (10/12 + 3/4) / 2, SP (1 + 1) / 2.
    assert res.per_anatomy.loc["lung", "auc"] == pytest.approx((10 / 12 + 0.75) / 2)
    assert res.summary["macro"]["auc"] == pytest.approx((10 / 12 + 0.75) / 2)
    assert res.summary["macro"]["sensitivity"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert res.summary["skipped_scans"] == {"B": 3}


def test_single_class_disease_gets_no_auc_and_is_left_out():
    lab, sco = frames({"A": (A_LABELS, A_SCORES), "C": ([0] * 7, [0.2] * 7)})
    res = evaluate(lab, sco, {"A": "lung", "C": "heart"}, n_bootstrap=50)
    assert np.isnan(res.per_disease.loc["C", "auc"]) and np.isnan(res.per_disease.loc["C", "sensitivity"])
    assert res.per_disease.loc["C", "status"] == "single_class"
    assert res.summary["single_class"] == ["C"]
    assert res.summary["num_included"] == 1
    assert res.summary["macro"]["auc"] == pytest.approx(10 / 12)  # A alone
    assert list(res.per_anatomy.index) == ["lung"]  # heart has no included disease


def test_nan_scores_are_skipped_not_zeroed():
    # Three extra scans lack the anatomy (NaN score); one has a NaN label. fVLM would set NaN -> 0,
    # which here would add negatives-looking positives and change the AUC.
    lab_base, sco_base = frames({"A": (A_LABELS, A_SCORES)})
    lab, sco = frames({"A": (A_LABELS + [1, 1, 0, np.nan], A_SCORES + [np.nan, np.nan, np.nan, 0.5])})
    base = evaluate(lab_base, sco_base, n_bootstrap=0).per_disease.loc["A"]
    got = evaluate(lab, sco, n_bootstrap=0).per_disease.loc["A"]
    assert got["n_skipped"] == 4 and got["n_evaluated"] == 7
    for key in A_EXPECTED:
        assert got[key] == pytest.approx(base[key]), key


def test_held_out_threshold_comes_from_validation():
    val_lab, val_sco = frames({"A": (A_LABELS, A_SCORES)})
    test_lab, test_sco = frames({"A": (B_LABELS, B_SCORES)})
    own = evaluate(test_lab, test_sco, n_bootstrap=0).per_disease.loc["A"]
    held = evaluate(test_lab, test_sco, val_labels=val_lab, val_scores=val_sco, n_bootstrap=0)
    row = held.per_disease.loc["A"]
    assert own["threshold"] == pytest.approx(94 / 99) and own["specificity"] == 1.0
    assert row["threshold"] == pytest.approx(69 / 99)
    got = (row["sensitivity"], row["specificity"], row["accuracy"], row["precision"])
    assert got == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert row["auc"] == pytest.approx(0.75)  # AUC does not depend on the threshold
    assert held.summary["protocol"].startswith("held-out")


def test_held_out_single_class_validation_gives_no_threshold():
    val_lab, val_sco = frames({"A": ([0, 0, 0], [0.1, 0.2, 0.3])})
    test_lab, test_sco = frames({"A": (B_LABELS, B_SCORES)})
    res = evaluate(test_lab, test_sco, val_labels=val_lab.iloc[:3], val_scores=val_sco.iloc[:3], n_bootstrap=0)
    assert res.summary["no_threshold"] == ["A"]
    assert res.per_disease.loc["A", "auc"] == pytest.approx(0.75)
    assert np.isnan(res.per_disease.loc["A", "sensitivity"])


def _noisy_frames(seed=0, n=150):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.3).astype(float)
    s = np.clip(0.3 * y + 0.7 * rng.random((n, 3)), 0, 1)
    s[rng.random((n, 3)) < 0.1] = np.nan
    return frames_from_arrays([f"s{i}" for i in range(n)], ["d0", "d1", "d2"], y, s)


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    lab, sco = _noisy_frames()
    amap = {"d0": "a", "d1": "a", "d2": "b"}
    r1 = evaluate(lab, sco, amap, n_bootstrap=300, seed=7)
    r2 = evaluate(lab, sco, amap, n_bootstrap=300, seed=7)
    r3 = evaluate(lab, sco, amap, n_bootstrap=300, seed=8)
    t = r1.per_disease
    assert ((t.auc_ci_low < t.auc) & (t.auc < t.auc_ci_high)).all()
    lo, hi = r1.summary["macro_auc_ci"]
    assert lo < r1.summary["macro"]["auc"] < hi
    pd.testing.assert_frame_equal(t, r2.per_disease)
    assert r1.summary["macro_auc_ci"] == r2.summary["macro_auc_ci"]
    assert r1.summary["macro_auc_ci"] != r3.summary["macro_auc_ci"]
    assert r1.summary["bootstrap_valid_resamples"] == 300


def test_bootstrap_off():
    lab, sco = _noisy_frames()
    res = evaluate(lab, sco, n_bootstrap=0)
    assert res.per_disease.auc_ci_low.isna().all() and res.summary["macro_auc_ci"] is None


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda lab, sco: (lab, sco.rename(columns={"A": "Z"})), "only in labels \\['A'\\]"),
        (lambda lab, sco: (lab, sco.rename(index={"scan_0": "other"})), "scan ids differ"),
        (lambda lab, sco: (lab.replace({1.0: 2.0}), sco), "labels column 'A' must be 0/1"),
        (lambda lab, sco: (lab, sco.replace({0.9: 1.5})), "scores column 'A' must lie in \\[0, 1\\]"),
        (lambda lab, sco: (lab, sco.astype(object).assign(A="high")), "scores column 'A' is not numeric"),
        (lambda lab, sco: (pd.concat([lab, lab.iloc[:1]]), sco), "duplicate scan ids"),
    ],
)
def test_validate_tables_errors_name_the_problem(mutate, match):
    lab, sco = frames({"A": (A_LABELS, A_SCORES)})
    with pytest.raises(ValueError, match=match):
        validate_tables(*mutate(lab, sco))


def test_evaluate_rejects_unmapped_disease_and_half_validation():
    lab, sco = frames({"A": (A_LABELS, A_SCORES)})
    with pytest.raises(ValueError, match="no anatomy for diseases \\['A'\\]"):
        evaluate(lab, sco, {"B": "lung"}, n_bootstrap=0)
    with pytest.raises(ValueError, match="both val_labels and val_scores"):
        evaluate(lab, sco, val_labels=lab, n_bootstrap=0)
    with pytest.raises(ValueError, match="n_bootstrap >= 0"):
        evaluate(lab, sco, n_bootstrap=-1)
    with pytest.raises(ValueError, match="0 < level < 1"):
        evaluate(lab, sco, level=95)


def test_save_writes_tables_and_strict_json(tmp_path):
    lab, sco = frames({"A": (A_LABELS, A_SCORES), "C": ([0] * 7, [0.2] * 7)})
    paths = evaluate(lab, sco, {"A": "lung", "C": "heart"}, n_bootstrap=20).save(tmp_path)
    assert {p.name for p in paths.values()} == {"per_disease.csv", "per_disease.md", "per_anatomy.csv",
                                                "per_anatomy.md", "summary.json"}
    summary = json.loads(paths["summary_json"].read_text())  # strict: no NaN tokens
    assert summary["single_class"] == ["C"]
    back = pd.read_csv(paths["per_disease_csv"], index_col="disease")
    assert back.loc["A", "auc"] == pytest.approx(10 / 12)
    assert isinstance(EvalResult(back, None), EvalResult)


def _write_csvs(tmp_path, labels: dict, scores: dict, ids=("v1", "v2", "v3", "v4", "v5", "v6", "v7")):
    for name, cols in (("L.csv", labels), ("S.csv", scores)):
        pd.DataFrame({"VolumeName": list(ids), **cols}).to_csv(tmp_path / name, index=False)
    return str(tmp_path / "L.csv"), str(tmp_path / "S.csv")


def test_cli_end_to_end(tmp_path):
    # Emphysema = case A; Cardiomegaly = case B on 4 scans, the other 3 empty (not evaluated).
    lpath, spath = _write_csvs(
        tmp_path,
        {"Emphysema": A_LABELS, "Cardiomegaly": B_LABELS + [None] * 3},
        {"Emphysema": A_SCORES, "Cardiomegaly": B_SCORES + [None] * 3},
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ctvlp.eval.metrics", "--labels", lpath, "--scores", spath, "--out", str(out),
         "--bootstrap", "50"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "macro AUC 79.2" in proc.stdout  # (10/12 + 3/4) / 2 = 0.7917
    table = pd.read_csv(out / "per_disease.csv", index_col="disease")
    assert table.loc["Emphysema", "anatomy"] == "lung" and table.loc["Cardiomegaly", "anatomy"] == "heart"
    assert table.loc["Emphysema", "auc"] == pytest.approx(10 / 12)
    assert table.loc["Emphysema", "f1_weighted"] == pytest.approx(268 / 315)
    assert table.loc["Cardiomegaly", "n_skipped"] == 3
    assert "| lung | Emphysema | 7 (3/4) | 0 | 83.3 [" in (out / "per_disease.md").read_text()
    assert (out / "per_anatomy.csv").exists() and (out / "summary.json").exists()


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ({"Emphysema": A_LABELS}, {"Emphysema": A_SCORES[:-1] + [1.2]}, "scores column 'Emphysema' must lie in [0, 1]"),
        ({"Emphysema": A_LABELS[:-1] + [3]}, {"Emphysema": A_SCORES}, "labels column 'Emphysema' must be 0/1"),
        ({"Emphysema": A_LABELS}, {"Emphysem": A_SCORES}, "only in scores ['Emphysem']"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_column(tmp_path, capsys, labels, scores, message):
    lpath, spath = _write_csvs(tmp_path, labels, scores)
    with pytest.raises(SystemExit) as exc:
        main(["--labels", lpath, "--scores", spath, "--out", str(tmp_path / "o"), "--bootstrap", "0"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_missing_id_column_exits_2(tmp_path, capsys):
    pd.DataFrame({"id": ["a"], "X": [1]}).to_csv(tmp_path / "L.csv", index=False)
    with pytest.raises(SystemExit) as exc:
        main(["--labels", str(tmp_path / "L.csv"), "--scores", str(tmp_path / "L.csv"), "--out", str(tmp_path)])
    assert exc.value.code == 2 and "no 'VolumeName' column" in capsys.readouterr().err


def test_cli_held_out_protocol_and_anatomy_map(tmp_path):
    # Validation = case A (threshold 69/99), test = case B: SE 1/2, SP 1/2 (see the top comment).
    val_dir, test_dir = tmp_path / "val", tmp_path / "test"
    val_dir.mkdir()
    test_dir.mkdir()
    vl, vs = _write_csvs(val_dir, {"X": A_LABELS}, {"X": A_SCORES})
    tl, ts = _write_csvs(test_dir, {"X": B_LABELS}, {"X": B_SCORES}, ids=("t1", "t2", "t3", "t4"))
    (tmp_path / "map.json").write_text(json.dumps({"X": "spleen"}))
    out = tmp_path / "out"
    assert main(["--labels", tl, "--scores", ts, "--val-labels", vl, "--val-scores", vs, "--out", str(out),
                 "--anatomy-map", str(tmp_path / "map.json"), "--bootstrap", "0"]) == 0
    row = pd.read_csv(out / "per_disease.csv", index_col="disease").loc["X"]
    assert row["anatomy"] == "spleen"
    assert (row["threshold"], row["sensitivity"], row["specificity"]) == pytest.approx((69 / 99, 0.5, 0.5))
    with pytest.raises(SystemExit) as exc:
        main(["--labels", tl, "--scores", ts, "--val-labels", vl, "--out", str(out)])
    assert exc.value.code == 2


def test_anatomy_maps_from_the_catalogue():
    amap = anatomy_map(SYNTHETIC)
    assert amap["Cardiomegaly"] == "heart" and amap["Kidney stone"] == "kidney" and len(amap) == len(SYNTHETIC)
    assert default_anatomy_map(["Emphysema", "Mystery finding"]) == {"Emphysema": "lung", "Mystery finding": "other"}
    with pytest.raises(TypeError, match=".name and .anatomy"):
        anatomy_map(["Emphysema"])
