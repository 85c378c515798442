"""Use a trained model: from a raw scan (NIfTI file or DICOM series folder) to per-anatomy
embeddings, per-disease probabilities and yes/no calls.

``Predictor.from_export(uri)`` / ``predictor(scan, mask=None, report=None)`` (:mod:`.predictor`);
reading, masks and the shared ingest transforms (:mod:`.scan`); the results table
(:mod:`.results`); ``python -m ctvlp.predict --model EXPORT SCAN ... --out results.csv`` (:mod:`.__main__`).
"""

from ctvlp.predict.predictor import Prediction, Predictor
from ctvlp.predict.scan import ScanRejected, SegmentationUnavailable

__all__ = ["Prediction", "Predictor", "ScanRejected", "SegmentationUnavailable"]
