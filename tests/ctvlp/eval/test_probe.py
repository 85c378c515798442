"""Linear probe: separable embeddings give a high AUC; absent anatomies and one-class diseases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctvlp.eval.probe import ProbeSet, fit_probe


def synthetic_set(n: int, seed: int, shift: float = 1.5) -> ProbeSet:
    """M = 2 anatomies, E = 8. Disease 0 (anatomy 0) moves the embedding along axis 0; disease 1
    (anatomy 1) is pure noise. Anatomy 1 is absent in every 4th study."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(n, 2)).astype(float)
    embeds = rng.normal(size=(n, 2, 8))
    embeds[:, 0, 0] += shift * (2 * labels[:, 0] - 1)
    present = np.ones((n, 2), bool)
    present[::4, 1] = False
    embeds[~present] = np.nan
    return ProbeSet(embeds, present, labels)


def test_probe_separates_separable_embeddings():
    train, test = synthetic_set(300, 0), synthetic_set(200, 1)
    fit = fit_probe(train, ["signal", "noise"], [0, 1], epochs=100)
    scores = fit.predict(test)
    assert ((scores[~np.isnan(scores)] >= 0) & (scores[~np.isnan(scores)] <= 1)).all()
    assert roc_auc_score(test.labels[:, 0], scores[:, 0]) > 0.9
    keep = test.present[:, 1]
    assert abs(roc_auc_score(test.labels[keep, 1], scores[keep, 1]) - 0.5) < 0.15  # noise stays near chance
    np.testing.assert_array_equal(np.isnan(scores[:, 1]), ~test.present[:, 1])


def test_probe_skips_single_class_diseases_and_notes_them():
    train = synthetic_set(50, 0)
    train.labels[:, 1] = 0.0
    fit = fit_probe(train, ["signal", "never"], [0, 1], epochs=20)
    assert fit.heads[1] is None and "one class" in fit.notes["never"]
    assert np.isnan(fit.predict(synthetic_set(10, 1))[:, 1]).all()


def test_probe_ignores_unknown_labels():
    train = synthetic_set(200, 0)
    train.labels[:50, 0] = np.nan
    idx, x, y = train.rows(0, 0)
    assert len(idx) == 150 and np.isfinite(x).all() and set(np.unique(y)) <= {0, 1}


@pytest.mark.parametrize("names, index, epochs", [(["a"], [0, 1], 10), (["a", "b", "c"], [0, 1, 1], 10),
                                                  (["a", "b"], [0, 1], 0)])
def test_probe_rejects_bad_arguments(names, index, epochs):
    with pytest.raises(ValueError):
        fit_probe(synthetic_set(20, 0), names, index, epochs=epochs)


def test_probe_set_checks_shapes():
    with pytest.raises(ValueError, match="one S"):
        ProbeSet(np.zeros((3, 2, 4)), np.ones((3, 2), bool), np.zeros((4, 1)))
