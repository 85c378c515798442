"""One self-contained HTML page per run: pictures, metric tables, macro summary, resolved spec.

Images are embedded as base64 ``data:`` URIs, so the single file opens anywhere (a browser on a
laptop, an artifact viewer, a mail attachment) without its PNGs beside it. Every value is
HTML-escaped. A tiny inline script records on ``<body>`` how many images decoded
(``data-images-loaded`` / ``data-images-total``), which headless-browser tests read.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ctvlp.eval.metrics import EvalResult
from ctvlp.eval.tables import anatomy_rows, auc_with_ci, disease_rows, note_lines

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_NAME = "report.html"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.avg td { font-weight: bold; background: #fafae8; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; color: #555; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.kpi { font-size: 1.3em; }
"""

# Counts decoded images after load; tests read the body attributes from the rendered DOM.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(ok));
  document.body.setAttribute("data-images-total", String(imgs.length));
});
"""


def html_table(header: Sequence[str], rows: Sequence[Sequence], last_is_average: bool = False) -> str:
    """``<table>`` from header and cell rows; cells are escaped; optional highlighted last row."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="avg"' if last_is_average and i == len(rows) - 1 else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` of a PNG file (ValueError if it is not a PNG)."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file (report images must be PNGs)")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _result_section(name: str, result: EvalResult) -> str:
    """Macro summary with CI, per-anatomy table (Table 2), per-disease table (Table 10), notes."""
    s, m = result.summary, result.summary["macro"]
    ci = s.get("macro_auc_ci") or [None, None]
    boot = s.get("bootstrap", {})
    kpi = (f"<p class='kpi'>macro AUC <b>{html.escape(auc_with_ci(m['auc'], ci[0], ci[1]))}</b> "
           f"({s['num_included']}/{s['num_diseases']} diseases; {html.escape(s['protocol'])}; "
           f"bootstrap n={boot.get('n')}, seed={boot.get('seed')}, level={boot.get('level')})</p>")
    macro = html_table(["metric", "macro mean (%)"],
                       [[k, "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"]
                        for k, v in m.items()])
    parts = [f"<h2>Zero-shot diagnosis: {html.escape(name)}</h2>", kpi, macro]
    header, rows = anatomy_rows(result)
    if header:
        parts += ["<h3>Per anatomy (paper Table 2 layout; %)</h3>", html_table(header, rows, last_is_average=True)]
    parts += ["<h3>Per disease (paper Table 10 layout; %)</h3>",
              html_table(*disease_rows(result), last_is_average=True)]
    parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in note_lines(result)) + "</ul>")
    return "\n".join(parts)


def _tables_html(metrics_tables) -> str:
    if metrics_tables is None:
        return ""
    if isinstance(metrics_tables, EvalResult):
        metrics_tables = {"evaluation": metrics_tables}
    if not isinstance(metrics_tables, Mapping):
        raise TypeError("metrics_tables must be an EvalResult or a mapping name -> EvalResult | DataFrame")
    parts = []
    for name, table in metrics_tables.items():
        if isinstance(table, EvalResult):
            parts.append(_result_section(str(name), table))
        elif isinstance(table, pd.DataFrame):
            df = table.reset_index() if table.index.name else table
            cells = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
            parts += [f"<h2>{html.escape(str(name))}</h2>", html_table([str(c) for c in df.columns], cells)]
        else:
            raise TypeError(f"metrics_tables[{name!r}] must be an EvalResult or a DataFrame, "
                            f"got {type(table).__name__}")
    return "\n".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _images_html(images: Mapping[str, str | Path]) -> str:
    if not images:
        return ""
    figs = [f"<figure><img alt='{html.escape(str(cap), quote=True)}' src='{png_data_uri(p)}'>"
            f"<figcaption>{html.escape(str(cap))}</figcaption></figure>" for cap, p in images.items()]
    return "<h2>Pictures</h2>\n" + "\n".join(figs)


def write_report(
    out_dir: str | Path,
    title: str,
    metrics_tables: EvalResult | Mapping[str, EvalResult | pd.DataFrame] | None,
    images: Mapping[str, str | Path],
    spec_text: str | None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    Args:
        out_dir: directory (created).
        title: page title.
        metrics_tables: one ``EvalResult`` or a mapping section name -> ``EvalResult`` (macro
            summary with CI, per-anatomy and per-disease tables) or ``DataFrame`` (shown as is,
            e.g. an ablation comparison).
        images: caption -> PNG path, embedded in the page in this order.
        spec_text: the resolved spec (YAML text), shown verbatim.
        extra: key -> value facts about the run (git commit, wall time, paths), shown as a table.
    """
    if not isinstance(title, str) or not title:
        raise ValueError("title must be a non-empty string")
    run_rows = [["generated (UTC)", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")]]
    run_rows += [[str(k), str(v)] for k, v in (extra or {}).items()]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Run</h2>", html_table(["key", "value"], run_rows),
        _tables_html(metrics_tables),
        _images_html(images),
    ]
    if spec_text:
        body += ["<h2>Resolved spec</h2>", f"<pre>{html.escape(spec_text)}</pre>"]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>\n"
        "<body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    path.write_text(page, encoding="utf-8")
    return path
