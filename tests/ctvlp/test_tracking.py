"""ctvlp.tracking: the console line of a training step (totals, rate, ETA) and its cadence."""

from __future__ import annotations

import re

from ctvlp.tracking import MetricsTracker, Progress, format_duration


def test_duration_format():
    assert [format_duration(s) for s in (0, 12.4, 312, 7260)] == ["0s", "12s", "5m12s", "2h01m"]


def test_progress_line_has_step_and_epoch_totals_rate_and_eta(monkeypatch):
    clock = iter([100.0, 110.0, 130.0])  # start, after step 1, after step 3
    monkeypatch.setattr("ctvlp.tracking.time.perf_counter", lambda: next(clock))
    p = Progress("phase2", epochs=3, steps_per_epoch=4, samples_per_step=16)
    assert p.line(1, {"loss": 2.5, "epoch": 0, "samples_per_s": 9.0}) == \
        "[phase2] step 1/12 (8%) | epoch 1/3 | 1.6 samples/s | ETA 1m50s | loss=2.5"
    # 2 steps of 16 samples in 20 s since the last line; 30 s for 3 steps -> 9 left take 90 s
    assert p.line(3, {"loss": 2.0}).startswith("[phase2] step 3/12 (25%) | epoch 1/3 | 1.6 samples/s | ETA 1m30s |")


def test_cadence_every_n_steps_plus_first_and_epoch_ends(capsys):
    tracker = MetricsTracker(None, console_every=10, progress=Progress("phase1", epochs=2, steps_per_epoch=7,
                                                                       samples_per_step=4, start_step=0))
    for step in range(1, 15):
        tracker.log(step, {"loss": 1.0})
    steps = [int(m) for m in re.findall(r"step (\d+)/14", capsys.readouterr().out)]
    assert steps == [1, 7, 10, 14]
    MetricsTracker(None, enabled=False, progress=Progress("p", 1, 1, 1)).log(1, {"loss": 1.0})
    assert capsys.readouterr().out == ""  # ranks other than 0 print nothing
