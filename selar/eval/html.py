"""A self-contained HTML report (images inlined as data URIs), readable offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

ANALYSIS_IMAGES = ("entropy.png", "sweep.png", "logit_lens.png")

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:1em 0;border:1px solid #eee}
code{background:#f6f6f6;padding:1px 4px}"""

# marks the page once every image has loaded (used by the tests; harmless otherwise)
SCRIPT = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images-loaded',ok+'/'+im.length);});"""


def table_html(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    img = f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
    return f"<figure>{img}<figcaption>{html.escape(path.name)}</figcaption></figure>"


def write_html(rep: dict, dirs: list[str], out: Path) -> Path:
    """report.html from a report's tables (`rep`: header and rows, length, details, images) and the
    analysis plots found under the run directories."""
    images, models = list(rep["images"]), rep.get("models") or ["not recorded"]
    for d in dirs:
        for name in ANALYSIS_IMAGES:
            for p in sorted(Path(d).rglob(name)):
                if p not in images:
                    images.append(p)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>selar report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>selar report</h1>",
        f"<p>Runs: {html.escape(', '.join(dirs))}</p>",
        f"<p>Model{'s' if len(models) > 1 else ''}: {html.escape('; '.join(models))}</p>",
        *[f"<p>{html.escape(n)}</p>" for n in rep.get("notes", [])],
        "<p>Accuracy (%) as avg@N with a 95% interval; against <code>cot</code> (the cot row of the same "
        "model, engine, dtype, prompt and protocol): (difference, p-value of a paired test), over the "
        "problems both rows answered; when fewer than either row's, the cell says on how many.</p>",
        table_html(rep["header"], rep["rows"]),
        "<h2>Length, truncation and answer form</h2>",
        "<p>Generations cut by the token limit, and (thinking models) generations that never closed their "
        "reasoning with <code>&lt;/think&gt;</code>.</p>",
        table_html(*rep["length"]),
        "<h2>Details</h2>",
        table_html(*rep["details"]),
        "<h2>Plots</h2>",
        *[image_html(p) for p in images],
        f"<script>{SCRIPT}</script></body></html>",
    ]
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
