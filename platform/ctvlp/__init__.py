"""ctvlp: anatomy-aware 3D CT vision-language pre-training (ViSD-Boost), plain PyTorch core.

This package never imports Ray: Ray lives at the edges (ingest/, jobs/, tune/).
``ctvlp.Predictor`` (:mod:`ctvlp.predict`) scores raw scans with a trained export; it is imported
on first use, so ``import ctvlp`` stays light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Predictor", "Prediction"):
        from ctvlp import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'ctvlp' has no attribute {name!r}")
