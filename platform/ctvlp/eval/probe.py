"""Linear probe on frozen anatomy embeddings (ViSD-Boost Table 4).

The vision encoder (with its anatomy pooling) is frozen; each anatomy's embedding comes from the
same window as zero-shot diagnosis (:mod:`ctvlp.eval.embed`). For every disease a linear head
(logistic regression) on its anatomy's embedding is trained on the train split and scored on the
evaluation split with the same metrics as zero-shot (:func:`ctvlp.eval.metrics.evaluate`).

The heads are scikit-learn ``LogisticRegression`` (L-BFGS, L2) on standardised embeddings: the
embeddings are cached, so a full-batch convex fit is exact, fast and deterministic; a torch head
trained by AdamW would reach the same optimum with more knobs. ``epochs`` caps the L-BFGS
iterations (each one full-batch pass over the cached embeddings); ``class_weight="balanced"``
because most findings are rare.

Shape legend: S studies, M anatomies, E embed dim, D diseases.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class ProbeSet:
    """Cached embeddings and labels of one split.

    Attributes:
        embeds: [S, M, E] anatomy embeddings (NaN where absent). present: [S, M] bool.
        labels: [S, D] disease labels 0/1 (NaN = unknown).
    """

    embeds: np.ndarray
    present: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        s, m = self.present.shape
        if self.embeds.ndim != 3 or self.embeds.shape[:2] != (s, m) or self.labels.shape[0] != s:
            raise ValueError(f"need embeds [S, M, E], present [S, M], labels [S, D] with one S; got "
                             f"{self.embeds.shape}, {self.present.shape}, {self.labels.shape}")

    def rows(self, anatomy: int, disease: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(study indices, X [n, E], y [n]) where the anatomy is present and the label known."""
        idx = np.flatnonzero(self.present[:, anatomy] & ~np.isnan(self.labels[:, disease]))
        return idx, self.embeds[idx, anatomy].astype(np.float64), self.labels[idx, disease].astype(int)


@dataclass
class ProbeFit:
    """Heads per disease (None when the train split holds one class) and fit notes."""

    names: list[str]
    anatomy_index: list[int]
    heads: list[Pipeline | None]
    notes: dict[str, str] = field(default_factory=dict)

    def predict(self, data: ProbeSet) -> np.ndarray:
        """P(disease) [S, D]; NaN where the anatomy is absent or the disease has no head."""
        out = np.full((data.present.shape[0], len(self.names)), np.nan)
        for k, (j, head) in enumerate(zip(self.anatomy_index, self.heads)):
            rows = np.flatnonzero(data.present[:, j])
            if head is not None and rows.size:
                out[rows, k] = head.predict_proba(data.embeds[rows, j].astype(np.float64))[:, 1]
        return out


def fit_probe(train: ProbeSet, names: Sequence[str], anatomy_index: Sequence[int], epochs: int = 50,
              c: float = 1.0, seed: int = 0) -> ProbeFit:
    """Fit one standardised logistic-regression head per disease on its anatomy's embedding.

    Args:
        train: the train split's cached embeddings and labels (columns in ``names`` order).
        names: D disease names; anatomy_index: D anatomy indices j.
        epochs: max L-BFGS iterations (full-batch passes); c: inverse L2 strength; seed: solver seed.
    """
    if len(names) != len(anatomy_index) or len(names) != train.labels.shape[1]:
        raise ValueError(f"{len(names)} names, {len(anatomy_index)} anatomy indices and "
                         f"{train.labels.shape[1]} label columns must agree")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    heads: list[Pipeline | None] = []
    notes: dict[str, str] = {}
    for k, (name, j) in enumerate(zip(names, anatomy_index)):
        _, x, y = train.rows(j, k)
        if len(np.unique(y)) < 2:
            heads.append(None)
            notes[name] = f"not fitted: {len(y)} train scans with one class"
            continue
        head = make_pipeline(StandardScaler(), LogisticRegression(
            C=c, max_iter=epochs, class_weight="balanced", random_state=seed))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            head.fit(x, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            notes[name] = f"L-BFGS stopped at {epochs} iterations before convergence"
        heads.append(head)
    return ProbeFit(list(names), list(anatomy_index), heads, notes)
