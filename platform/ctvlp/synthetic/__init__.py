"""Synthetic CT corpus in CT-RATE's published layout: ``python -m ctvlp.synthetic --out DIR ...``.

Chest-abdomen-pelvis phantoms with TotalSegmentator v2 masks, the 22 abnormalities of
:data:`ctvlp.diseases.SYNTHETIC` planted inside their anatomy, and radiologist-style reports
that state exactly what was planted. See :mod:`ctvlp.synthetic.corpus` for the split mapping
and :mod:`ctvlp.synthetic.writer` for the on-disk layout.
"""

from ctvlp.synthetic.corpus import generate_corpus, plan_corpus
from ctvlp.synthetic.lesions import DISEASE_PARAMS
from ctvlp.synthetic.presets import PRESETS, Preset, get_preset

__all__ = ["DISEASE_PARAMS", "PRESETS", "Preset", "generate_corpus", "get_preset", "plan_corpus"]
