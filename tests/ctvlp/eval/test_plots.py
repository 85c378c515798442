"""ctvlp.eval.plots: every picture is a real, non-blank PNG with one panel per group."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctvlp.eval import plots
from ctvlp.eval.metrics import frames_from_arrays


def png_array(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def assert_drawn(path, width=None):
    img = png_array(path)
    assert img.std() > 10, "image is blank"
    if width is not None:  # panels are 4.0 in (ROC) wide at 110 dpi
        assert img.shape[1] == width


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = (rng.random((80, 4)) < 0.3).astype(float)
    s = np.clip(0.3 * y + 0.7 * rng.random((80, 4)), 0, 1)
    s[:5, 0] = np.nan
    y[:, 3] = 0  # single class: drawn as a note, not a curve
    return frames_from_arrays([f"s{i}" for i in range(80)], ["n", "e", "c", "x"], y, s)


def test_roc_one_panel_per_anatomy(tmp_path, scored):
    lab, sco = scored
    two = plots.plot_roc_curves(lab, sco, {"n": "lung", "e": "lung", "c": "heart", "x": "heart"}, tmp_path / "r2.png")
    amap3 = {"n": "lung", "e": "liver", "c": "heart", "x": "heart"}
    three = plots.plot_roc_curves(lab, sco, amap3, tmp_path / "r3.png")
    assert two == tmp_path / "r2.png"
    assert_drawn(two, width=2 * 440)
    assert_drawn(three, width=3 * 440)
    with pytest.raises(ValueError, match="no anatomy for diseases"):
        plots.plot_roc_curves(lab, sco, {"n": "lung"}, tmp_path / "bad.png")


def test_tsne_panels_and_input_checks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = np.arange(60) % 3 == 0
    x[y] += 3.0
    anatomy = np.array(["lung"] * 40 + ["heart"] * 17 + ["tiny"] * 3)  # 'tiny' (<5) gets a note
    path = plots.plot_tsne(x, y, anatomy, tmp_path / "tsne.png", perplexity=10, max_iter=250)
    assert_drawn(path, width=int(3 * 3.6 * 110))
    with pytest.raises(ValueError, match="need embeddings"):
        plots.plot_tsne(x, y[:10], anatomy, tmp_path / "bad.png")


def test_activation_histograms_array_and_per_anatomy(tmp_path):
    rng = np.random.default_rng(0)
    one = plots.plot_activation_histograms(rng.normal(size=(10, 64)), rng.laplace(scale=0.2, size=(10, 64)),
                                           tmp_path / "a.png")
    assert_drawn(one)
    per = plots.plot_activation_histograms({"lung": rng.normal(size=100), "liver": rng.normal(size=100)},
                                           {"lung": rng.normal(size=100), "liver": rng.normal(size=100)},
                                           tmp_path / "b.png")
    assert png_array(per).shape[1] == 2 * png_array(one).shape[1]
    with pytest.raises(TypeError):
        plots.plot_activation_histograms({"lung": [1.0]}, [1.0], tmp_path / "c.png")
    with pytest.raises(ValueError, match="panel keys differ"):
        plots.plot_activation_histograms({"lung": [1.0]}, {"liver": [1.0]}, tmp_path / "c.png")


def test_codebook_usage(tmp_path):
    counts = np.zeros((3, 20))
    counts[0] = 5  # uniform: perplexity 20
    counts[1, 0] = 9  # collapsed to one code
    assert_drawn(plots.plot_codebook_usage(counts, ["lung", "heart", "liver"], tmp_path / "cb.png"))
    with pytest.raises(ValueError, match="counts must be"):
        plots.plot_codebook_usage(counts, ["lung"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-negative"):
        plots.plot_codebook_usage(-counts, ["a", "b", "c"], tmp_path / "bad.png")


def test_loss_curves_from_dict_csv_and_jsonl(tmp_path):
    rows = [{"phase": "phase2", "step": s, "itc_loss": 1.0 / (s + 1), "lr": 1e-4} for s in range(5)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    series = plots.loss_series(plots.read_metric_rows(tmp_path / "m.jsonl"))
    assert series == {"phase2/itc_loss": [(float(s), 1.0 / (s + 1)) for s in range(5)]}  # lr is not a loss
    assert plots.loss_series(plots.read_metric_rows(tmp_path / "m.csv")) == series
    assert_drawn(plots.plot_loss_curves(tmp_path / "m.jsonl", tmp_path / "l1.png"))
    assert_drawn(plots.plot_loss_curves({"a_loss": [(0, 2.0), (1, 1.0)], "b_loss": [(0, 1.0)]}, tmp_path / "l2.png",
                                        log_y=True))
    with pytest.raises(ValueError, match="no loss series"):
        plots.plot_loss_curves({}, tmp_path / "l3.png")
    with pytest.raises(ValueError, match="without 'step'"):
        plots.loss_series([{"x_loss": 1.0}])
