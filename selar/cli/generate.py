"""`selar generate`: one or more prompts, one method or several side by side; a single prompt is
streamed on engines that can stream, and printed whole when done on the others (vLLM)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..text import Detokenizer
from .options import (
    compile_load_options,
    compile_option,
    device_option,
    dtype_option,
    engine_option,
    fail,
    method_option,
    model_option,
    options_for,
    parse_sets,
)


@click.command()
@click.argument("prompts", nargs=-1, required=True)
@model_option
@method_option()
@click.option("--compare", default=None, help="comma-separated methods to run side by side, e.g. cot,selar")
@click.option("--tau", type=float, default=None, help="SeLaR gate threshold in [0, 1] (default 0.5)")
@click.option("--k", type=int, default=None, help="SeLaR soft top-k, at least 2 (default 3)")
@click.option("--push-weight", type=float, default=None, help="SeLaR lambda; 0 turns the push off (default 1)")
@click.option("--temperature", "-t", type=float, default=None, help="0 = greedy (default 0.6)")
@click.option("--top-p", type=float, default=None, help="default 0.95")
@click.option("--top-k", type=int, default=None, help="0 = off (default 20)")
@click.option("--min-p", type=float, default=None, help="default 0")
@click.option("--presence-penalty", type=float, default=None, help="in [-2, 2], on generated tokens (default 0)")
@click.option("--frequency-penalty", type=float, default=None, help="in [-2, 2], per generated repeat (default 0)")
@click.option("--repetition-penalty", type=float, default=None, help="> 0, on prompt and generated tokens (default 1)")
@click.option("--max-new-tokens", "-n", type=int, default=None, help="default 1024")
@click.option("--seed", type=int, default=None, help="default 0")
@click.option("--stop", multiple=True, help="stop string (repeatable)")
@click.option(
    "--soft-scope",
    type=click.Choice(["auto", "reasoning", "all"]),
    default=None,
    help="where soft inputs are allowed (auto: before </think> on thinking models, else everywhere)",
)
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="any other method option, e.g. --set gate_scope=batch"
)
@dtype_option
@device_option
@click.option("--batch-size", type=int, default=16, show_default=True)
@engine_option
@compile_option
@click.option("--raw", is_flag=True, help="no chat template: the prompt is the raw text")
@click.option("--trace", is_flag=True, help="per token: entropy and whether the input was soft")
@click.option("--json", "as_json", is_flag=True, help="print the result objects as JSON")
def generate(
    prompts,
    model,
    method,
    compare,
    tau,
    k,
    push_weight,
    temperature,
    top_p,
    top_k,
    min_p,
    presence_penalty,
    frequency_penalty,
    repetition_penalty,
    max_new_tokens,
    seed,
    stop,
    soft_scope,
    sets,
    dtype,
    device,
    batch_size,
    engine,
    compile_mode,
    raw,
    trace,
    as_json,
):
    """Generate from one or more PROMPTS.

    Example: selar generate "What is 17 * 23?" --method selar --tau 0.5 --k 3
    """
    from ..api import generate as api_generate
    from ..engines import get_engine, load_model, load_options
    from ..engines.base import refuse_method
    from ..methods import make_config

    flat = {
        "tau": tau,
        "k": k,
        "push_weight": push_weight,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "repetition_penalty": repetition_penalty,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "soft_scope": soft_scope,
        "stop": tuple(stop) or None,
    }
    opts = {key: v for key, v in flat.items() if v is not None}
    opts.update(parse_sets(sets))
    if any(not p.strip() for p in prompts):
        fail("the prompt is empty")
    methods = [m.strip() for m in compare.split(",") if m.strip()] if compare else [method]
    # validate everything before the (slow) model load
    configs = {}
    for m in methods:
        sub = options_for(m, opts, strict=len(methods) == 1)
        configs[m] = make_config(m, **sub)
    if len(methods) > 1:
        unused = set(opts) - set().union(*(options_for(m, opts, False) for m in methods))
        if unused:
            fail(f"option(s) {', '.join(sorted(unused))} apply to none of {', '.join(methods)}")
    capabilities = get_engine(engine).capabilities  # known from the registry, before anything is loaded
    for m in methods:
        refuse_method(engine, capabilities, m)
    longest = max(c.sampling.max_new_tokens for c in configs.values())
    mdl = load_model(
        model,
        dtype=dtype,
        device=device,
        engine=engine,
        **load_options(engine, min(batch_size, len(prompts)), longest),
        **compile_load_options(engine, compile_mode),
    )
    single = not as_json and len(methods) == 1 and len(prompts) == 1
    stream = single and mdl.capabilities.streaming  # else (vLLM) the text is printed when done
    results = {}
    for m in methods:
        cb = _Streamer(mdl.tokenizer) if stream else None
        results[m] = api_generate(
            mdl, list(prompts), m, config=configs[m], raw=raw, trace=trace, batch_size=batch_size, on_step=cb
        )
        if cb:
            cb.finish()
    if as_json:
        out = [dict(r.to_dict(), model=model) for m in methods for r in results[m]]
        click.echo(json.dumps(out if len(out) > 1 else out[0], indent=2, ensure_ascii=False))
        return
    if len(methods) > 1:
        _print_compare(prompts, methods, results)
    elif single and not stream:
        click.echo(results[methods[0]][0].text)
    elif not stream:
        for r in results[methods[0]]:
            click.echo(f"### {r.prompt}\n{r.text}\n")
    for m in methods:
        for r in results[m]:
            if trace:
                _print_trace(r)
            click.echo(
                f"[{m}] {r.num_tokens} tokens, {r.num_soft_steps} soft steps, finish: {r.finish_reason}", err=True
            )


class _Streamer:
    """Prints the text of a single prompt as it is generated (soft-step tokens in colour on a TTY)."""

    def __init__(self, tokenizer: Any):
        self.text = Detokenizer(tokenizer)
        self.color = sys.stdout.isatty()

    def __call__(self, rows: list[int], tokens: list[int], soft: list[bool]) -> None:
        delta = self.text.add(tokens[:1])
        if delta:
            click.echo(click.style(delta, fg="cyan") if (self.color and soft[0]) else delta, nl=False)

    def finish(self) -> None:
        click.echo(self.text.add([], final=True))


def _print_compare(prompts, methods, results) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for i, p in enumerate(prompts):
        table = Table(title=p, show_lines=True)
        for m in methods:
            r = results[m][i]
            table.add_column(f"{m}\n{r.num_tokens} tok, {r.num_soft_steps} soft, {r.finish_reason}", overflow="fold")
        table.add_row(*[results[m][i].text for m in methods])
        console.print(table)


def _print_trace(r) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trace ({r.method})")
    for c in ("#", "token", "text", "entropy", "soft"):
        table.add_column(c)
    for j, t in enumerate(r.trace or []):
        table.add_row(str(j), str(t["token"]), repr(t["text"]), f"{t['entropy']:.3f}", "soft" if t["soft"] else "")
    Console(stderr=True).print(table)
