"""ctvlp.segment.tasks: TotalSegmentator's `total` task as the installed package defines it."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.anatomy import CHEST, ts_total_ids
from ctvlp.segment import tasks


def test_total_is_five_parts_at_1_5_mm_whose_labels_cover_the_117_ids_once():
    task = tasks.total_task("total")
    assert [p.dataset_id for p in task.parts] == [291, 292, 293, 294, 295]
    assert task.resample_mm == 1.5 and {p.trainer for p in task.parts} == {"nnUNetTrainerNoMirroring"}
    merged = np.concatenate([task.lut(p)[1:] for p in task.parts])
    assert sorted(merged.tolist()) == list(range(1, 118))  # every total id from exactly one part
    organs = task.lut(task.parts[0])
    ids = ts_total_ids()
    assert organs[1] == ids["spleen"] and organs[0] == 0


@pytest.mark.parametrize("name,ids,mm", [("total_fast", [297], 3.0), ("total_fastest", [298], 6.0)])
def test_single_model_tasks_predict_total_ids_directly(name, ids, mm):
    task = tasks.total_task(name)
    assert [p.dataset_id for p in task.parts] == ids and task.resample_mm == mm
    lut = task.lut(task.parts[0])
    assert (lut == np.arange(len(lut))).all() and len(lut) == 118


def test_roi_subset_selects_the_parts_that_hold_it():
    task = tasks.total_task("total")
    chest = tasks.roi_classes(tuple(c for cs in CHEST.values() for c in cs))
    assert [p.dataset_id for p in task.parts_for(chest)] == [291, 293]  # organs + cardiac
    assert task.parts_for(()) == task.parts
    assert [p.dataset_id for p in task.parts_for(("rib_left_1",))] == [295]
    with pytest.raises(ValueError, match="not_a_class"):
        tasks.roi_classes(("heart", "not_a_class"))
    with pytest.raises(ValueError, match="unknown"):
        tasks.total_task("total_v9")
