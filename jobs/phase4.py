"""Phase 4: boosted alignment, from phase 2's aligned model and phase 3's VQ-VAE.

Usage: ``python jobs/phase4.py --spec jobs/specs/<run>.yaml [--dry-run] [key=value ...]``
(locally, or on a cluster through ``ray job submit --working-dir . -- python jobs/phase4.py ...``).
Phase references in ``phases.phase4.init`` resolve to the exports of the same spec's earlier runs.
"""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

from jobs.launch import main_phase  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main_phase(4))
