"""ctvlp.eval.report: the HTML page embeds every picture as a decodable PNG and shows the tables.

Two checks that every image loads: a pure-Python one (parse the page, decode each <img> data URI
as a PNG) that always runs, and a headless-Chromium one (the page's own load script writes the
count of decoded images onto <body>) that skips where no Chromium is installed.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctvlp.eval import plots
from ctvlp.eval.metrics import evaluate, frames_from_arrays
from ctvlp.eval.report import png_data_uri, write_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install -y chromium)")


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report with two real plots, a metrics result and an ablation DataFrame."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    y = (rng.random((40, 2)) < 0.4).astype(float)
    s = np.clip(0.4 * y + 0.6 * rng.random((40, 2)), 0, 1)
    lab, sco = frames_from_arrays([f"s{i}" for i in range(40)], ["Emphysema", "Cardiomegaly"], y, s)
    amap = {"Emphysema": "lung", "Cardiomegaly": "heart"}
    result = evaluate(lab, sco, amap, n_bootstrap=50)
    images = {
        "ROC <per anatomy>": plots.plot_roc_curves(lab, sco, amap, tmp / "roc.png"),
        "Loss": plots.plot_loss_curves({"itc_loss": [(0, 2.0), (1, 1.5), (2, 1.2)]}, tmp / "loss.png"),
    }
    ablation = pd.DataFrame({"macro_auc": [0.71, 0.8]}, index=pd.Index(["phase 2", "+ phase 1"], name="row"))
    path = write_report(tmp / "out", "Run <demo> & co", {"zero-shot": result, "ablation": ablation}, images,
                        "name: demo\nnote: <b>not bold</b>\n", {"git_commit": "abc123"})
    return path, images, result


def test_every_img_is_an_embedded_png(report):
    path, images, _ = report
    parser = _Images()
    parser.feed(path.read_text())
    assert len(parser.srcs) == len(images)
    for src, png_path in zip(parser.srcs, images.values(), strict=True):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data == png_path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # raises on a corrupt PNG
            assert im.format == "PNG" and im.size[0] > 100


def test_page_shows_tables_spec_and_escapes(report):
    path, _, result = report
    page = path.read_text()
    ci = result.summary["macro_auc_ci"]
    assert f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" in page  # macro CI shown
    assert "Per anatomy (paper Table 2 layout" in page and "Per disease (paper Table 10 layout" in page
    assert "<td>Emphysema</td>" in page and "<td>+ phase 1</td>" in page and "<td>0.8</td>" in page
    assert "<title>Run &lt;demo&gt; &amp; co</title>" in page
    assert "note: &lt;b&gt;not bold&lt;/b&gt;" in page  # spec shown verbatim, escaped
    assert "ROC &lt;per anatomy&gt;" in page and "<td>abc123</td>" in page
    assert not re.search(r"src=['\"](?!data:)", page), "every image must be embedded"


def test_rejects_non_png_and_bad_tables(tmp_path):
    (tmp_path / "x.png").write_bytes(b"GIF89a....")
    with pytest.raises(ValueError, match="not a PNG"):
        png_data_uri(tmp_path / "x.png")
    with pytest.raises(TypeError, match="metrics_tables"):
        write_report(tmp_path, "t", [1, 2], {}, None)
    with pytest.raises(ValueError, match="title"):
        write_report(tmp_path, "", None, {}, None)


def _chromium(*args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           f"--user-data-dir={cwd}/profile", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True, cwd=cwd)


def _loaded(path, tmp_path) -> tuple[int, int]:
    dom = _chromium("--dump-dom", path.as_uri(), cwd=tmp_path).stdout
    m = re.search(r'<body[^>]*data-images-loaded="(\d+)"[^>]*data-images-total="(\d+)"', dom)
    assert m, "the report's load script did not run"
    return int(m.group(1)), int(m.group(2))


@needs_chromium
def test_chromium_loads_every_image(report, tmp_path):
    path, images, _ = report
    assert _loaded(path, tmp_path) == (len(images), len(images))
    # Negative control: a truncated PNG payload must be counted as not loaded.
    broken = tmp_path / "broken.html"
    page = path.read_text()
    first = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    broken.write_text(page.replace(first, first[:64], 1))
    assert _loaded(broken, tmp_path) == (len(images) - 1, len(images))


@pytest.mark.slow
@needs_chromium
def test_chromium_screenshot_shows_the_pictures(report, tmp_path):
    path, _, _ = report
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1280,2400", f"--screenshot={shot}", path.as_uri(), cwd=tmp_path)
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2400, 1280)
    # The ROC plot's coloured curves (matplotlib tab:blue) must be on screen, not only text.
    blue = (np.abs(pixels - np.array([31, 119, 180])).sum(-1) < 40).sum()
    assert blue > 200
