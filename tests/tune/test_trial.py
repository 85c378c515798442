"""tune.trial: the step schedule of a trial and the deadlock-free concurrency rule."""

from __future__ import annotations

import pytest

from tune.trial import DRIVER_CPU, max_concurrent_trials, step_schedule


@pytest.mark.parametrize("rows, batch, max_steps, epochs, per_epoch", [
    (416, 8, 6, 1, 6),    # plenty of rows: one capped epoch
    (40, 8, 6, 2, 3),     # 5 full batches per epoch: 2 epochs of 3
    (40, 8, 7, 2, 4),     # uneven: 8 steps (>= max_steps)
    (8, 8, 3, 3, 1),      # one batch per epoch
])
def test_step_schedule(rows, batch, max_steps, epochs, per_epoch):
    s = step_schedule(rows, batch, max_steps, 2)
    assert (s.epochs, s.steps_per_epoch, s.total_steps) == (epochs, per_epoch, epochs * per_epoch)
    assert s.total_steps >= max_steps and s.steps_per_epoch <= rows // batch


def test_step_schedule_refuses_a_split_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        step_schedule(7, 8, 4, 2)


@pytest.mark.parametrize("cluster, kw, expected", [
    ({"CPU": 2.0}, dict(workers=1, cpus_per_worker=1.0), 1),          # 2 x 1.01 > 2: one at a time
    ({"CPU": 2.0}, dict(workers=1, cpus_per_worker=0.99), 2),         # 2 x (0.99 + 0.01) = 2
    ({"CPU": 2.0}, dict(workers=1, cpus_per_worker=0.99, data_cpus=1.0), 1),
    ({"CPU": 64.0, "GPU": 8.0}, dict(workers=2, cpus_per_worker=4, gpus_per_worker=1.0), 4),  # GPU-bound
    ({"CPU": 64.0, "GPU": 8.0}, dict(workers=1, cpus_per_worker=1, gpus_per_worker=0.5, num_trials=5), 5),
])
def test_max_concurrent_trials(cluster, kw, expected):
    n = max_concurrent_trials(cluster, **kw)
    assert n == expected
    # the invariant: n trials' workers + drivers + data fit in the cluster
    used = n * (kw["workers"] * kw["cpus_per_worker"] + DRIVER_CPU) + kw.get("data_cpus", 0.0)
    assert used <= cluster["CPU"] + 1e-9


def test_no_trial_fits_says_how_to_fix():
    with pytest.raises(ValueError, match="lower tune.workers_per_trial"):
        max_concurrent_trials({"CPU": 2.0}, workers=2, cpus_per_worker=1.0)
    with pytest.raises(ValueError, match="GPU"):
        max_concurrent_trials({"CPU": 8.0, "GPU": 0.0}, workers=1, cpus_per_worker=1.0, gpus_per_worker=1.0)
