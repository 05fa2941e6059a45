"""`selar analyze`: the entropy distribution, threshold sweeps and the logit lens."""

from __future__ import annotations

import click

from .options import Group, data_file_option, dtype_option, fail, model_option, pairs, parse_sets


@click.group(cls=Group)
def analyze() -> None:
    """Entropy distribution, threshold sweeps and the logit lens."""


def _dataset_prompts(dataset, limit, data_files):
    from ..eval import datasets as ds

    probs = ds.load(dataset, paths=pairs(data_files, "--data-file"))
    return [p.prompt for p in (probs[:limit] if limit else probs)]


def _prompts_file(path):
    from pathlib import Path

    from ..eval.datasets import DatasetError, read_records

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
@model_option
@click.option("--dataset", default="gsm8k", show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--out", "out_dir", required=True)
@click.option("--method", default="cot", show_default=True, help="method whose decoding is measured")
@click.option("--tau", type=float, default=0.5, show_default=True, help="threshold marked on the plot")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="e.g. k=5, temperature=0")
@click.option("--max-new-tokens", "-n", type=int, default=512, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@data_file_option
@dtype_option
def analyze_entropy(model, dataset, limit, out_dir, method, tau, sets, max_new_tokens, batch_size, data_files, dtype):
    """Distribution of the normalised top-k entropy over all decoding steps (PNG + JSON).

    Example: selar analyze entropy --dataset gsm8k --limit 50 --out runs/entropy
    """
    from rich.progress import Progress

    from ..analysis import entropy
    from ..engines import load_model
    from ..methods import make_config

    opts = {"max_new_tokens": max_new_tokens, **parse_sets(sets)}
    make_config(method, **opts)
    prompts = _dataset_prompts(dataset, limit, data_files)
    mdl = load_model(model, dtype=dtype)
    with Progress(transient=True) as prog:
        task = prog.add_task("generating", total=len(prompts))
        summ = entropy.run(
            mdl,
            prompts,
            out_dir,
            method=method,
            tau=tau,
            batch_size=batch_size,
            progress=lambda n: prog.advance(task, n),
            **opts,
        )
    click.echo(
        f"{summ['steps']} steps over {summ['sequences']} generations; mean {summ['mean']:.3f}, "
        f"median {summ['median']:.3f}"
    )
    click.echo("share of steps above tau: " + ", ".join(f"{t}: {v * 100:.1f}%" for t, v in summ["share_above"].items()))
    click.echo(f"wrote {summ['plot']} and entropy.json")


@analyze.command("sweep")
@model_option
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
@data_file_option
@click.option("--out", "out_dir", required=True)
@dtype_option
@click.option(
    "--schedule",
    type=click.Choice(["fixed", "continuous"]),
    default="continuous",
    show_default=True,
    help="batching of each evaluation (see selar eval --schedule)",
)
def analyze_sweep(
    model,
    dataset,
    taus,
    ks,
    limit,
    samples,
    seed,
    sets,
    max_new_tokens,
    batch_size,
    no_baseline,
    data_files,
    out_dir,
    dtype,
    schedule,
):
    """Accuracy and tokens against tau (and k), one resumable evaluation per setting.

    Example: selar analyze sweep --dataset gsm8k --taus 0.3,0.5,0.7 --ks 3,5 --limit 50 --out runs/sweep
    """
    from ..analysis import sweep
    from ..engines import load_model
    from ..eval.datasets import get_dataset

    get_dataset(dataset)
    try:
        tau_l = [float(t) for t in taus.split(",") if t.strip()]
        k_l = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        fail("--taus takes numbers and --ks integers, comma-separated")
    s = parse_sets(sets)
    if max_new_tokens is not None:
        s["max_new_tokens"] = max_new_tokens
    mdl = load_model(model, dtype=dtype)
    res = sweep.run(
        mdl,
        model,
        dataset,
        out_dir,
        tau_l,
        k_l,
        limit=limit,
        samples=samples,
        seed=seed,
        sets=s,
        batch_size=batch_size,
        baseline=not no_baseline,
        data_files=pairs(data_files, "--data-file"),
        schedule=schedule,
    )
    for r in res["rows"]:
        click.echo(
            f"{r['setting']:>14}: accuracy {r['accuracy'] * 100:5.1f}% [{r['ci_low'] * 100:.1f}, "
            f"{r['ci_high'] * 100:.1f}], tokens {r['tokens']:.0f}, soft {r['soft_share'] * 100:.1f}%"
        )
    click.echo(f"wrote {res['plot']} and sweep.json")


@analyze.command("logit-lens")
@model_option
@click.option("--prompts", "prompts_file", default=None, help="a text file (one prompt per line) or JSONL/JSON/CSV")
@click.option("--dataset", default=None, help="or take prompts from a benchmark")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--out", "out_dir", required=True)
@click.option("--push-weight", type=float, default=1.0, show_default=True, help="lambda of the 'push on' run")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="selar options, e.g. tau=0.4")
@click.option("--max-new-tokens", "-n", type=int, default=256, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@data_file_option
@dtype_option
def analyze_logit_lens(
    model, prompts_file, dataset, limit, out_dir, push_weight, sets, max_new_tokens, batch_size, data_files, dtype
):
    """Per layer, how strongly the hidden state at soft steps points at the mixture's top-1 and
    top-2 candidates, with the push on and off.

    Example: selar analyze logit-lens --prompts prompts.txt --out runs/lens
    """
    from ..analysis import logit_lens
    from ..engines import load_model
    from ..methods import make_config

    if bool(prompts_file) == bool(dataset):
        fail("give --prompts FILE or --dataset NAME")
    prompts = _prompts_file(prompts_file)[:limit] if prompts_file else _dataset_prompts(dataset, limit, data_files)
    opts = {"max_new_tokens": max_new_tokens, **parse_sets(sets)}
    make_config("selar", push_weight=push_weight, **opts)
    mdl = load_model(model, dtype=dtype)
    res = logit_lens.run(mdl, prompts, out_dir, push_weight=push_weight, batch_size=batch_size, **opts)
    for name in ("push_on", "push_off"):
        s = res[name]
        if s.get("soft_steps"):
            click.echo(
                f"{name}: {s['soft_steps']} soft steps; last layer p(top-1) {s['p_top1'][-1]:.3f}, "
                f"p(top-2) {s['p_top2'][-1]:.3f}; top-1 in top-5 {s['in_topk_top1'][-1]:.2f}, "
                f"top-2 in top-5 {s['in_topk_top2'][-1]:.2f}"
            )
        else:
            click.echo(f"{name}: no soft steps")
    click.echo(f"wrote {res['plot']} and logit_lens.json")
