"""The HTML report renders in headless Chromium with every image loaded."""

from __future__ import annotations

import json
import re

from chromium import dump_dom, needs_chromium

from selar.eval.report import write_report


def fake_run(d):
    d.mkdir()
    with open(d / "results.jsonl", "w") as f:
        for m, ok in (("cot", [1, 0, 1, 0]), ("selar", [1, 1, 1, 0])):
            for i, c in enumerate(ok):
                f.write(
                    json.dumps(
                        {
                            "dataset": "gsm8k",
                            "problem_id": str(i),
                            "method": m,
                            "sample": 0,
                            "correct": bool(c),
                            "pred": "1",
                            "gold": "1",
                            "num_tokens": 100 + i,
                            "num_soft_steps": 5 if m == "selar" else 0,
                            "finish_reason": "stop",
                            "text": "t",
                        }
                    )
                    + "\n"
                )
    return d


def test_html_is_self_contained(tmp_path):
    rep = write_report([str(fake_run(tmp_path / "run"))], html=True)
    page = rep["html"].read_text()
    assert page.count("<img") == 3 and "data:image/png;base64," in page  # accuracy vs tokens, by dataset, vs budget
    assert not re.search(r'src="(?!data:)', page)  # nothing fetched from elsewhere
    assert "<td>selar</td>" in page


@needs_chromium
def test_html_renders_in_headless_chromium(tmp_path):
    rep = write_report([str(fake_run(tmp_path / "run"))], html=True)
    dom = dump_dom(rep["html"].as_uri(), tmp_path / "profile")
    assert 'data-images-loaded="3/3"' in dom, dom[:500]
