"""ctvlp.eval.bootstrap: rank AUC parity with sklearn, seeded scan resampling, percentile CIs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctvlp.eval.bootstrap import auc_rows, bootstrap_auc, percentile_ci


def test_auc_rows_equals_roc_auc_score_with_ties_and_masks():
    rng = np.random.default_rng(1)
    s = np.round(rng.random((8, 40)), 1)  # one decimal: many ties
    y = rng.random((8, 40)) < 0.4
    valid = rng.random((8, 40)) < 0.8
    got = auc_rows(s, y, valid)
    for b in range(8):
        assert got[b] == pytest.approx(roc_auc_score(y[b][valid[b]], s[b][valid[b]]))
    assert np.isnan(auc_rows(s[:1], np.zeros((1, 40), bool)))[0]  # one class -> NaN


def test_auc_rows_hand_computed():
    # pos {0.3, 0.7, 0.9} vs neg {0.1, 0.3, 0.3, 0.6}: 2 + 4 + 4 = 10 of 12 pairs -> 10/12.
    assert auc_rows(np.array([[0.1, 0.3, 0.3, 0.6, 0.3, 0.7, 0.9]]), np.array([[0, 0, 0, 0, 1, 1, 1]]))[0] == (
        pytest.approx(10 / 12))


def test_bootstrap_auc_is_seeded_and_marks_single_class_resamples():
    # Disease 1 has a single positive among 6 scans: P(resample misses it) = (5/6)^6 ~ 0.33 -> NaN rows.
    y = np.array([[0, 0], [0, 0], [1, 0], [1, 0], [0, 0], [1, 1]], dtype=float)
    s = np.array([[0.1, 0.2], [0.4, 0.3], [0.35, 0.1], [0.8, 0.4], [0.2, np.nan], [0.9, 0.7]])
    a = bootstrap_auc(y, s, n_bootstrap=200, seed=3, chunk=64)
    assert a.shape == (200, 2)
    np.testing.assert_array_equal(a, bootstrap_auc(y, s, n_bootstrap=200, seed=3))  # chunking-independent
    assert not np.array_equal(a, bootstrap_auc(y, s, n_bootstrap=200, seed=4), equal_nan=True)
    assert 0.2 < np.isnan(a[:, 1]).mean() < 0.5
    assert np.nanmin(a) >= 0.0 and np.nanmax(a) <= 1.0


def test_percentile_ci():
    # 101 values 0.00..1.00: the 2.5th / 97.5th percentiles (linear interpolation) are 0.025 / 0.975.
    assert percentile_ci(np.arange(101) / 100) == pytest.approx((0.025, 0.975))
    assert percentile_ci(np.array([np.nan, 0.5, 0.5])) == (0.5, 0.5)  # NaN resamples skipped
    assert np.isnan(percentile_ci(np.array([np.nan]))[0])
