"""`selar train`: adaptive-length latent reasoning (seed 003): SFT (curriculum, latent budget with
slack, optional CODI distillation), then RL (GRPO with a length penalty); needs the `train` extra."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..eval.progress import StepBar
from .options import Group, fail


def _train_setup(threads: int) -> None:
    import torch

    try:
        import peft  # noqa: F401
    except ImportError:
        fail("training needs the train extra: pip install 'selar[train]'")
    torch.set_num_threads(max(1, threads))


def _echo_eval(label: str, r: dict) -> None:
    by = "/".join(f"{v['mean_latent_steps']:.2f}" for _, v in sorted(r["by_ops"].items(), key=lambda kv: int(kv[0])))
    click.echo(
        f"{label}: accuracy {r['accuracy']:.3f} on {r['n']} held-out problems, mean latent steps "
        f"{r['mean_latent_steps']:.2f} (correct answers: {r['mean_latent_steps_correct']:.2f}; by reasoning steps "
        f"{by}), well formed {r['well_formed']:.3f}"
    )


def _data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--data, --eval-data, --n-eval, --max-steps, --seed: the one split of selar.train.data.split_data."""
    opts = [
        click.option(
            "--data",
            default="synthetic",
            show_default=True,
            help="synthetic (multi-step arithmetic mod 10), gsm8k-aug (hub) or a question/steps/answer JSONL file",
        ),
        click.option(
            "--eval-data", default=None, help="held-out JSONL (default: the first --n-eval problems of --data)"
        ),
        click.option("--n-eval", type=int, default=1000, show_default=True, help="held-out problems"),
        click.option("--max-steps", type=int, default=4, show_default=True, help="synthetic: operations, 1..N"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--threads", type=int, default=2, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _split(data: str, n_train: int, n_eval: int, max_steps: int, seed: int, eval_data: str | None):
    from ..train.data import split_data

    return split_data(data, n_train, n_eval, max_steps=max_steps, seed=seed, eval_data=eval_data)


@click.group("train", cls=Group)
def train_group() -> None:
    """Train adaptive-length latent reasoning: SFT (latent budget, CODI) then RL (GRPO, length penalty).

    Example: selar train demo --out runs/train-demo
    """


@train_group.command("sft")
@click.option(
    "--model",
    "-m",
    "model_name",
    default="tiny",
    show_default=True,
    help="tiny (a small Llama trained from scratch), or a catalog name, folder or hub id (LoRA)",
)
@_data_options
@click.option("--n-train", type=int, default=8000, show_default=True)
@click.option("--out", "out_dir", required=True, help="adapter directory to write")
@click.option("--lora/--full", default=None, help="LoRA adapters (default for pretrained models) or full training")
@click.option("--lora-r", type=int, default=16, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--lora-dropout", type=float, default=0.0, show_default=True)
@click.option("--projection", type=click.Choice(["none", "linear", "mlp"]), default="mlp", show_default=True)
@click.option("--max-latent", type=int, default=10, show_default=True, help="latent steps at most")
@click.option("--cot-steps", type=int, default=600, show_default=True, help="optimizer steps of stage 0 (plain CoT)")
@click.option("--steps-per-stage", type=int, default=400, show_default=True)
@click.option(
    "--latents-per-step",
    type=int,
    default=1,
    show_default=True,
    help="latent steps per CoT step in the curriculum (Coconut's c)",
)
@click.option(
    "--budget-base",
    type=int,
    default=3,
    show_default=True,
    help="latent budget of a problem once its whole CoT is latent: base + per-step x steps (-1: Coconut's "
    "steps x c, no slack)",
)
@click.option("--budget-per-step", type=int, default=1, show_default=True, help="0: a fixed budget of --budget-base")
@click.option(
    "--budget-steps", type=int, default=None, help="optimizer steps at the budget (default: --steps-per-stage)"
)
@click.option(
    "--budget-lengths",
    type=click.Choice(["budget", "need-to-budget"]),
    default="budget",
    show_default=True,
    help="need-to-budget: the answer also trained after any latent length from the need to the budget",
)
@click.option(
    "--curriculum",
    type=click.Choice(["coconut", "none"]),
    default="coconut",
    show_default=True,
    help="none: CoT, then every problem at its budget",
)
@click.option(
    "--distill",
    type=click.Choice(["none", "codi"]),
    default="none",
    show_default=True,
    help="codi: pull the hidden states at the answer position to the CoT teacher's (every layer)",
)
@click.option("--distill-weight", type=float, default=1.0, show_default=True)
@click.option(
    "--thought-weight",
    type=float,
    default=1.0,
    show_default=True,
    help="loss weight of latent thought j decoding to reasoning step j's result (0: none)",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--hidden", type=int, default=128, show_default=True, help="tiny: hidden size")
@click.option("--layers", type=int, default=4, show_default=True, help="tiny: layers")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
def train_sft_cmd(
    model_name,
    data,
    eval_data,
    n_eval,
    max_steps,
    seed,
    threads,
    n_train,
    out_dir,
    lora,
    lora_r,
    lora_alpha,
    lora_dropout,
    projection,
    max_latent,
    cot_steps,
    steps_per_stage,
    latents_per_step,
    budget_base,
    budget_per_step,
    budget_steps,
    budget_lengths,
    curriculum,
    distill,
    distill_weight,
    thought_weight,
    batch_size,
    lr,
    hidden,
    layers,
    device,
):
    """Supervised fine-tuning: CoT, then latent steps replacing the CoT up to a latent budget.

    Example: selar train sft --out runs/sft --distill codi
    """
    import os
    import time

    _train_setup(threads)
    from ..devices import resolve_device
    from ..engines import load_model
    from ..train import LatentReasoner, SFTConfig, evaluate, train_sft
    from ..train.tiny import tiny_model, tiny_tokenizer

    cfg = SFTConfig(
        cot_steps=cot_steps,
        steps_per_stage=steps_per_stage,
        latents_per_step=latents_per_step,
        budget_base=None if budget_base < 0 else budget_base,
        budget_per_step=budget_per_step,
        budget_steps=budget_steps,
        budget_lengths=budget_lengths,
        curriculum=curriculum,
        distill=distill,
        distill_weight=distill_weight,
        thought_weight=thought_weight,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        log_every=100,
    )
    train, held = _split(data, n_train, n_eval, max_steps, seed, eval_data)
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
    model = LatentReasoner.from_base(
        base,
        tok,
        base=base_ref,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        projection=projection,
        max_latent=max_latent,
        seed=seed,
    )
    t0 = time.perf_counter()
    with StepBar() as bar:
        train_sft(model, train, cfg, log=bar.log, tick=bar.tick)
    model.save(out_dir)
    click.echo(f"SFT: {time.perf_counter() - t0:.0f} s; adapter written to {out_dir}")
    _echo_eval("after SFT", evaluate(model, held))


@train_group.command("rl")
@click.option("--adapter", required=True, help="adapter directory written by `selar train sft`")
@_data_options
@click.option("--n-train", type=int, default=8000, show_default=True)
@click.option("--out", "out_dir", required=True, help="adapter directory to write")
@click.option("--steps", type=int, default=150, show_default=True, help="GRPO updates")
@click.option("--prompts-per-step", type=int, default=8, show_default=True)
@click.option("--group-size", type=int, default=8, show_default=True, help="completions per prompt (G)")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--beta", type=float, default=0.0, show_default=True, help="KL to the SFT model (the paper: 1e-3)")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="of the answer tokens in rollouts")
@click.option(
    "--stop-temperature",
    type=float,
    default=3.0,
    show_default=True,
    help="of the stop head in rollouts (above 1 explores more reasoning lengths)",
)
@click.option("--stop-temperature-end", type=float, default=None, help="anneal the stop temperature linearly to this")
@click.option(
    "--length-penalty", type=float, default=0.2, show_default=True, help="relative length penalty coefficient"
)
@click.option(
    "--length-accuracy-requirement",
    type=float,
    default=0.0,
    show_default=True,
    help="penalise length only when this share (<= 1) or count (> 1) of the group is correct; 0 = always",
)
@click.option("--length-reward-below", type=float, default=None, help="below the requirement, reward length by this")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
def train_rl_cmd(
    adapter,
    data,
    eval_data,
    n_eval,
    max_steps,
    seed,
    threads,
    n_train,
    out_dir,
    steps,
    prompts_per_step,
    group_size,
    lr,
    beta,
    temperature,
    stop_temperature,
    stop_temperature_end,
    length_penalty,
    length_accuracy_requirement,
    length_reward_below,
    device,
):
    """GRPO with reward = correct + format and a relative length penalty among correct answers.

    Example: selar train rl --adapter runs/sft --out runs/rl
    """
    import time

    _train_setup(threads)
    from ..devices import resolve_device
    from ..train import LatentReasoner, RLConfig, evaluate, train_rl

    cfg = RLConfig(
        steps=steps,
        prompts_per_step=prompts_per_step,
        group_size=group_size,
        lr=lr,
        beta=beta,
        stop_temperature=stop_temperature,
        stop_temperature_end=stop_temperature_end,
        temperature=temperature,
        length_penalty=length_penalty,
        length_accuracy_requirement=length_accuracy_requirement or None,
        length_reward_below=length_reward_below,
        seed=seed,
    )  # validated before anything slow
    train, held = _split(data, n_train, n_eval, max_steps, seed, eval_data)
    model = LatentReasoner.load(adapter, trainable=True, device=str(resolve_device(device)))
    _echo_eval("before RL", evaluate(model, held))
    t0 = time.perf_counter()
    with StepBar() as bar:
        train_rl(model, train, cfg, log=bar.log, tick=bar.tick)
    model.save(out_dir)
    click.echo(f"RL: {time.perf_counter() - t0:.0f} s; adapter written to {out_dir}")
    _echo_eval("after RL", evaluate(model, held))


@train_group.command("eval")
@click.option("--adapter", required=True)
@_data_options
def train_eval_cmd(adapter, data, eval_data, n_eval, max_steps, seed, threads):
    """Greedy accuracy and mean latent steps of an adapter on the held-out problems sft and rl report on."""
    _train_setup(threads)
    from ..train import LatentReasoner, evaluate

    _, held = _split(data, 0, n_eval, max_steps, seed, eval_data)
    _echo_eval(adapter, evaluate(LatentReasoner.load(adapter), held))


@train_group.command("demo")
@click.option("--out", "out_dir", required=True, help="directory for the data, both adapters, table, plot, summary")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_demo_cmd(out_dir, threads, seed):
    """SFT with slack, then RL, of a tiny Llama on synthetic arithmetic; the table and the plot.

    Example: selar train demo --out runs/train-demo
    """
    _train_setup(threads)
    from ..train.demo import PLOT, TABLE, DemoConfig, format_summary, run_demo

    with StepBar() as bar:
        summary = run_demo(out_dir, DemoConfig(seed=seed), log=bar.log, tick=bar.tick)
    click.echo(format_summary(summary))
    click.echo(f"written: {out_dir}/{TABLE}, {out_dir}/{PLOT}, {out_dir}/summary.json")


@train_group.command("report")
@click.argument("dirs", nargs=-1, required=True)
@click.option("--plot", "plot_path", default=None, help="write the plot of every run here (PNG)")
def train_report_cmd(dirs, plot_path):
    """Every demo run's table, their seeds side by side, and the mean and spread of the effect.

    Example: selar train report runs/demo-0 runs/demo-1 runs/demo-2 --plot runs/by_difficulty.png
    """
    from ..train.demo import format_seeds, format_summary, load_summaries, plot_by_difficulty

    summaries = load_summaries(dirs)
    for d, s in zip(dirs, summaries):
        click.echo(f"{d} (seed {s['config']['seed']}):\n{format_summary(s)}\n")
    click.echo(format_seeds(summaries))
    if plot_path:
        click.echo(f"plot: {plot_by_difficulty(summaries, plot_path)}")
