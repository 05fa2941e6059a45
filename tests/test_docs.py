"""The README and the docs site cannot drift from the code.

- Every shell and Python example (a fenced `bash`, `sh`, `console` or `python` block) in README.md
  and docs/ is marked: `<!-- example: run -->` before the fence runs it here (on the packaged
  SmolLM2-135M or tiny inputs, with few tokens), `<!-- example: skip: REASON -->` says what the test
  machine lacks (a GPU, the hub, vLLM's environment, a long run).
- The site builds with `mkdocs build --strict` (no broken link, missing page or warning), its CLI
  page lists every option of every command that `--help` shows, and headless Chromium renders its
  front page and CLI page.
- The README's results rows are rows of the full table in docs/evaluation.md.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from chromium import dump_dom, needs_chromium
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGS = {"bash", "sh", "console", "python"}
MARK = re.compile(r"<!-- example: (run|skip: (.+?)) -->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
NAV = ("Getting started", "Python API", "Command line", "Methods", "Evaluation", "Serving", "Engines", "Training")


def examples() -> tuple[list[tuple[str, str, str, str | None]], list[str]]:
    """(file:line, language, code, skip reason or None) of every marked example block, and where
    the unmarked ones are."""
    out, unmarked = [], []
    for path in DOCS:
        lines = path.read_text().split("\n")
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            indent, lang = m.group(1), m.group(2)
            j = i + 1
            while not lines[j].startswith(indent + "```"):
                j += 1
            if lang in LANGS:
                where = f"{path.relative_to(ROOT)}:{i + 1}"
                prev = next((x for x in reversed(lines[:i]) if x.strip()), "")
                mark = MARK.search(prev)
                if mark is None:
                    unmarked.append(where)
                else:
                    code = "\n".join(x[len(indent) :] for x in lines[i + 1 : j])
                    out.append((where, lang, code, mark.group(2)))
            i = j + 1
    return out, unmarked


EXAMPLES, UNMARKED = examples()
RUNNABLE = [e for e in EXAMPLES if e[3] is None]


def test_every_example_is_marked_and_says_why_it_is_skipped():
    assert not UNMARKED, f"examples without a run/skip mark (see this module's doc): {UNMARKED}"
    assert len(RUNNABLE) >= 8, RUNNABLE
    for where, _, _, why in EXAMPLES:
        assert why is None or len(why) > 10, f"{where}: say what the test machine lacks"


@pytest.mark.slow
@pytest.mark.parametrize("where,lang,code", [e[:3] for e in RUNNABLE], ids=[e[0] for e in RUNNABLE])
def test_runnable_example(where, lang, code, tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "SELAR_REPO": str(ROOT),
    }
    if lang == "python":
        (tmp_path / "example.py").write_text(code)
        cmd = [sys.executable, "example.py"]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{where} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def test_readme_results_rows_are_the_full_tables():
    full = (ROOT / "docs" / "evaluation.md").read_text().split("\n")
    rows = [x for x in (ROOT / "README.md").read_text().split("\n") if x.startswith("| qwen2.5-coder-")]
    assert len(rows) == 8 and all(r in full for r in rows)


def commands(cmd: click.Command, path: tuple[str, ...] = ("selar",)):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, (*path, name))


def help_options(path: tuple[str, ...]) -> set[str]:
    """The option names `selar ... --help` prints (its Options section)."""
    from selar.cli import main

    out = CliRunner().invoke(main, [*path[1:], "--help"], terminal_width=200)
    assert out.exit_code == 0, out.output
    section = out.output.split("Options:", 1)[1].split("Commands:", 1)[0]
    names = set()
    for line in section.split("\n"):
        m = re.match(r"\s+(-\S.*?)(?:\s{2,}|$)", line)  # the option column of an option's first line
        if m:
            names.update(re.findall(r"(?<![\w-])-{1,2}[A-Za-z][\w-]*", m.group(1)))
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return out


def test_cli_page_lists_every_option_of_every_command(site):
    from selar.cli import main

    page = (site / "cli.html").read_text()
    # one section per command, headed by its path (mkdocs-click: <hN id="selar-eval">selar eval)
    heads = list(re.finditer(r'<h[2-6] id="(selar[\w-]*)"', page))
    sections = {
        m.group(1): html.unescape(re.sub(r"<[^>]+>", "", page[m.end() : nxt.start() if nxt else len(page)]))
        for m, nxt in zip(heads, [*heads[1:], None])
    }
    checked = 0
    for path, cmd in commands(main):
        flags = help_options(path)
        params = {o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
        assert flags == params | {"-h", "--help"}, (path, flags ^ (params | {"-h", "--help"}))
        text = sections.get("-".join(path))
        assert text is not None, f"the CLI page has no section for `{' '.join(path)}`"
        missing = [f for f in sorted(flags) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
        assert not missing, f"`{' '.join(path)}`: the CLI page lacks {missing}"
        checked += len(flags)
    assert len(sections) == len(list(commands(main))) and checked > 100, (len(sections), checked)


@needs_chromium
def test_site_renders_in_headless_chromium(site, tmp_path):
    front = dump_dom((site / "index.html").as_uri(), tmp_path / "p1")
    assert "<title>selar</title>" in front, front[:500]
    start = front.find('class="md-nav md-nav--primary"')
    nav = front[start : front.find('class="md-content"', start)]  # the navigation the theme drew
    assert start > 0 and all(f">{x}<" in re.sub(r"\s*<", "<", re.sub(r">\s*", ">", nav)) for x in NAV), nav[:3000]
    cli = dump_dom((site / "cli.html").as_uri(), tmp_path / "p2")
    assert "<title>Command line - selar</title>" in cli, cli[:500]
    assert "--max-new-tokens" in cli and "--prefill-chunk" in cli and "selar generate" in cli
    assert "md-nav--primary" in cli and "Getting started" in cli
