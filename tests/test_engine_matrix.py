"""The README's engine x method matrix is the code's (`selar methods --markdown`), and every cell that
says "tested on CPU" is: each soft method runs through the thinking checks on every engine that can
feed it (tests/test_thinking_engines.py, _llamacpp.py, test_vllm_thinking.py), cot through each
engine's own tests, hidden-state methods through the transformers engine's."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from thinking import SOFT_METHODS

from selar.cli import main
from selar.cli.methods import matrix_markdown
from selar.engines.base import missing_kinds
from selar.engines.registry import ENGINES
from selar.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_readme_matrix_is_the_codes():
    table = matrix_markdown()
    assert table in (ROOT / "docs" / "engines.md").read_text(), (
        "docs/engines.md's engine matrix is stale: paste `selar methods --markdown`"
    )
    out = CliRunner().invoke(main, ["methods", "--markdown"])
    assert out.exit_code == 0 and out.output.strip() == table
    compact = matrix_markdown(compact=True)
    assert compact in (ROOT / "README.md").read_text(), (
        "README's engine matrix is stale: paste `selar methods --markdown --compact`"
    )
    out = CliRunner().invoke(main, ["methods", "--markdown", "--compact"])
    assert out.exit_code == 0 and out.output.strip() == compact
    assert "| tested on CPU |" in compact and "no (hidden states)" in compact and "| *GPU* |" in compact


def test_every_method_an_engine_runs_is_in_its_tests():
    for name, spec in METHODS.items():
        if "sparse" in spec.inputs or "dense" in spec.inputs:
            assert name in SOFT_METHODS, f"{name} feeds mixtures: add it to tests/thinking.py SOFT_METHODS"
        elif "hidden" in spec.inputs:
            assert set(ENGINES) - {e for e in ENGINES if missing_kinds(e, name)} == {"transformers"}
        else:
            assert spec.inputs == {"token"}


def test_refused_cells_are_refused_by_the_engine():
    from selar.engines.base import Capabilities, refuse_method

    for e, spec in ENGINES.items():
        for m in METHODS:
            missing = missing_kinds(e, m)
            try:
                refuse_method(e, spec.capabilities, m)
                refused = False
            except Exception as err:  # noqa: BLE001
                refused = True
                assert type(err).__name__ == "CapabilityError"
            assert refused == bool(missing), (e, m)
    assert Capabilities().inputs  # the default declaration feeds something
