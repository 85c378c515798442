"""Anatomy grouping: TotalSegmentator v2 ``total`` classes -> the M anatomies a model sees.

The class map is taken from the ``totalsegmentator`` package itself (``map_to_binary.class_map``),
pinned at 2.18.0 in requirements.txt, so ids never drift from the segmenter that produced a mask.
A grouping is an ordered ``{anatomy name: [TotalSegmentator class names]}``; anatomy ``j`` (0-based)
is written as mask value ``j + 1`` in grouped masks, 0 is background.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_LUNG_LOBES = [
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
]

# CT-RATE grouping exactly as the released fVLM pipeline merges it (data/resize.py).
CHEST: dict[str, list[str]] = {
    "lung": _LUNG_LOBES,
    "heart": ["heart", "atrial_appendage_left"],
    "esophagus": ["esophagus"],
    "aorta": ["aorta"],
}

# The paper's 15 evaluated anatomies plus the aorta. The paper's own 104->36 table is unpublished;
# this is our proposal (see shared/research/method.md section 5.3).
CHEST_ABDOMEN: dict[str, list[str]] = {
    "adrenal gland": ["adrenal_gland_left", "adrenal_gland_right"],
    "bladder": ["urinary_bladder"],
    "colon": ["colon"],
    "esophagus": ["esophagus"],
    "gallbladder": ["gallbladder"],
    "heart": ["heart", "atrial_appendage_left"],
    "kidney": ["kidney_left", "kidney_right", "kidney_cyst_left", "kidney_cyst_right"],
    "liver": ["liver"],
    "lung": _LUNG_LOBES,
    "pancreas": ["pancreas"],
    "portal vein": ["portal_vein_and_splenic_vein"],
    "small intestine": ["small_bowel", "duodenum"],
    "spleen": ["spleen"],
    "stomach": ["stomach"],
    "sacrum": ["sacrum"],
    "aorta": ["aorta"],
}

GROUPING_PRESETS: dict[str, dict[str, list[str]]] = {"chest": CHEST, "chest-abdomen": CHEST_ABDOMEN}


@lru_cache(maxsize=1)
def ts_total_classes() -> dict[int, str]:
    """TotalSegmentator v2 ``total`` task: class id (1..117) -> class name, from the package."""
    from totalsegmentator.map_to_binary import class_map

    return {int(k): str(v) for k, v in class_map["total"].items()}


@lru_cache(maxsize=1)
def ts_total_ids() -> dict[str, int]:
    """Inverse of :func:`ts_total_classes`: class name -> id."""
    return {name: idx for idx, name in ts_total_classes().items()}


def validate_grouping(grouping: dict[str, list[str]]) -> None:
    """Raise ValueError naming the first unknown class or a class claimed by two anatomies."""
    known = ts_total_ids()
    owner: dict[str, str] = {}
    if not grouping:
        raise ValueError("grouping is empty: give at least one anatomy")
    for anatomy, classes in grouping.items():
        if not classes:
            raise ValueError(f"grouping[{anatomy!r}] lists no TotalSegmentator class")
        for cls in classes:
            if cls not in known:
                raise ValueError(
                    f"grouping[{anatomy!r}]: {cls!r} is not a TotalSegmentator v2 'total' class"
                )
            if cls in owner:
                raise ValueError(f"class {cls!r} is in both {owner[cls]!r} and {anatomy!r}")
            owner[cls] = anatomy


def group_lut(grouping: dict[str, list[str]]) -> np.ndarray:
    """Lookup table ``lut[ts_id] -> grouped id`` (uint8, length 256): ``grouped = lut[raw_mask]``."""
    validate_grouping(grouping)
    ids = ts_total_ids()
    lut = np.zeros(256, dtype=np.uint8)
    for j, classes in enumerate(grouping.values()):
        for cls in classes:
            lut[ids[cls]] = j + 1
    return lut
