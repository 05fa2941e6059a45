"""`selar methods`: every method, what it feeds, and which engine runs it (the README's matrix)."""

from __future__ import annotations

import json

import click


def matrix_markdown(compact: bool = False) -> str:
    """The engine x method matrix as a Markdown table, from the method and engine registries.

    `compact` (the README's form): a cell is "tested on CPU" or "no" and the input kinds the engine
    lacks, and one row says what is known on a GPU (the docs' engines page has the full table).
    """
    from ..engines.base import method_matrix
    from ..engines.registry import ENGINES
    from ..methods import METHODS

    engines = list(ENGINES)
    rows = method_matrix(list(METHODS), engines)
    lines = ["| method | feeds | " + " | ".join(engines) + " |", "|---" * (len(engines) + 2) + "|"]
    for r in rows:
        spec = METHODS[r["method"]]
        if compact:
            cells = [
                "tested on CPU" if r[e] == "runs" else "no (" + r[e].removeprefix("refused: ") + ")" for e in engines
            ]
        else:
            cells = ["tested on CPU; GPU: not run" if r[e] == "runs" else r[e] for e in engines]
        lines.append(f"| `{r['method']}` | {', '.join(sorted(spec.inputs))} | " + " | ".join(cells) + " |")
    if not compact:
        lines.append("| *tested on* | | " + " | ".join(ENGINES[e].tested for e in engines) + " |")
    lines.append("| *GPU* | | " + " | ".join(ENGINES[e].gpu for e in engines) + " |")
    return "\n".join(lines)


@click.command("methods")
@click.option("--markdown", is_flag=True, help="Print the matrix as a Markdown table (as in the docs' engines page).")
@click.option("--compact", is_flag=True, help="With --markdown: short cells, as in the README.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per method.")
def methods_cmd(markdown: bool, compact: bool, as_json: bool) -> None:
    """List the methods, the input kinds each feeds, and the engines that run it.

    Example: selar methods
    """
    from ..engines.base import method_matrix
    from ..engines.registry import ENGINES
    from ..methods import METHODS

    if markdown:
        click.echo(matrix_markdown(compact))
        return
    rows = method_matrix(list(METHODS), list(ENGINES))
    if as_json:
        for r in rows:
            click.echo(
                json.dumps({**r, "inputs": sorted(METHODS[r["method"]].inputs), "help": METHODS[r["method"]].help})
            )
        return
    for r in rows:
        spec = METHODS[r["method"]]
        click.echo(f"{r['method']:<16} {spec.help}")
        for e in ENGINES:
            click.echo(f"  {e:<13} {r[e]}")
    click.echo("Engines: " + "; ".join(f"{e}: tested on {s.tested}, GPU: {s.gpu}" for e, s in ENGINES.items()))
