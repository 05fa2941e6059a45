"""What every command group shares: the error handling, `--set` parsing, and option decorators
whose choices and help texts come from the registries (methods, engines)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ..catalog import DEFAULT_MODEL
from ..errors import SelarError


def fail(msg: str, code: int = 2) -> NoReturn:
    """One sentence on stderr and a non-zero exit (2: bad input)."""
    click.echo(f"selar: error: {msg}", err=True)
    sys.exit(code)


class Group(click.Group):
    """Turns every SelarError into one sentence and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SelarError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)


def parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_sets(items: tuple) -> dict:
    """--set key=value pairs (values parsed as bool/int/float/none/str)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--set")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = parse_value(v.strip())
    return out


def options_for(method: str, opts: dict, strict: bool) -> dict:
    """The subset of opts that `method` accepts (all of them when strict)."""
    from ..methods import option_names

    names = option_names(method)
    return dict(opts) if strict else {k: v for k, v in opts.items() if k in names}


def pairs(text: str | None, what: str) -> dict:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}."""
    out = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        if "=" not in item:
            raise click.BadParameter(f"expected name=value, got {item!r}", param_hint=what)
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def print_table(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for h in rep["header"]:
        t.add_column(h)
    for r in rep["rows"]:
        t.add_row(*r)
    Console(width=200).print(t)


# -- shared option decorators (help built from the registries) ------------------------------------
def _engine_help() -> str:
    from ..engines import ENGINES

    return "; ".join(f"{n}: {s.help}" + (f" ({s.install})" if s.install else "") for n, s in ENGINES.items())


def _method_help() -> str:
    from ..methods import METHODS

    return ", ".join(METHODS)


def engine_option(f: Callable) -> Callable:
    from ..engines import ENGINES

    return click.option(
        "--engine", type=click.Choice(list(ENGINES)), default="transformers", show_default=True, help=_engine_help()
    )(f)


def model_option(f: Callable) -> Callable:
    return click.option(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        show_default=True,
        help="catalog name, model folder, GGUF file or hub id",
    )(f)


def method_option(default: str = "selar", help: str = "") -> Callable:
    return click.option("--method", default=default, show_default=True, help=help or f"one of: {_method_help()}")


def compile_option(f: Callable) -> Callable:
    """--compile auto|on|off, passed to the loader as `compile` (see `compile_load_options`)."""
    return click.option(
        "--compile",
        "compile_mode",
        type=click.Choice(["auto", "on", "off"]),
        default="auto",
        show_default=True,
        help="transformers engine: decode with the compiled static-cache engine (on), the eager one (off), "
        "or compile once the job is long enough to pay for it (auto: eval, serve, sweeps; not a short generate)",
    )(f)


def compile_load_options(engine: str, mode: str) -> dict[str, Any]:
    """Load options for --compile on this engine: {"compile": mode} for an engine whose loader takes
    it; nothing for others at the default (auto); a clear error when asked of an engine without it."""
    import inspect

    from ..engines import get_engine

    if "compile" in inspect.signature(get_engine(engine).load().load).parameters:
        return {"compile": mode}
    if mode != "auto":
        fail(f"--compile {mode} applies to the transformers engine only, not to {engine}")
    return {}


def dtype_option(f: Callable) -> Callable:
    return click.option(
        "--dtype",
        default="auto",
        show_default=True,
        help="auto (float32 on CPUs without bf16), bfloat16, float16, float32",
    )(f)


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")(f)


def data_file_option(f: Callable) -> Callable:
    return click.option(
        "--data-file",
        "data_files",
        default=None,
        metavar="NAME=PATH,...",
        help="offline file of a registry dataset, e.g. aime2024=aime2024.jsonl",
    )(f)
