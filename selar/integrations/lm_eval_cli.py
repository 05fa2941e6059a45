"""lm-evaluation-harness's command line with selar's model registered:

    python -m selar.integrations.lm_eval_cli run --model selar \\
        --model_args pretrained=smollm2-135m,method=selar,tau=0.5 --tasks TASKS --apply_chat_template

selar declares its model under lm-eval's plugin entry-point group (`lm_eval.models`), which
lm-eval releases with plugin discovery read by themselves (there `lm_eval --model selar` works as
is). lm-eval 0.4.13, the newest on PyPI when this was written, resolves `--model` against its
built-in registry only; this runner imports selar's model (and registers every other
`lm_eval.models` entry point, as later lm-eval does) before handing the arguments to lm-eval.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Optional


def register() -> None:
    """Register selar's model, then every installed `lm_eval.models` entry point lm-eval lacks."""
    from lm_eval.api.registry import model_registry

    from . import lm_eval_model  # noqa: F401  (registers "selar")

    for ep in entry_points(group="lm_eval.models"):
        if ep.name not in model_registry:
            model_registry.register(ep.name, target=ep)


def main(argv: Optional[list[str]] = None) -> None:
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
