"""The `selar` command line: one module per command group, sharing `options`.

generate.py  selar generate           evaluate.py  selar eval, selar report
serve.py     selar serve              analyze.py   selar analyze entropy|sweep|logit-lens
models.py    selar models list|pull|verify      train.py  selar train sft|rl|eval|demo
"""

from __future__ import annotations

import os

import click

from .. import __version__
from .analyze import analyze
from .evaluate import eval_cmd, report_cmd
from .generate import generate
from .methods import methods_cmd
from .models import models
from .options import Group
from .serve import serve
from .train import train_group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="selar")
def main() -> None:
    """Selective latent reasoning (SeLaR) and its baselines for open-weight LLMs."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the terminal for our output


for command in (generate, eval_cmd, report_cmd, serve, analyze, models, methods_cmd, train_group):
    main.add_command(command)

__all__ = ["main"]
