"""ctvlp: anatomy-aware 3D CT vision-language pre-training (ViSD-Boost), plain PyTorch core.

This package never imports Ray: Ray lives at the edges (ingest/, jobs/, tune/).
"""

__version__ = "0.1.0"
