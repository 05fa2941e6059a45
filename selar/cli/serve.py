"""`selar serve`: an OpenAI-compatible HTTP server. Step-wise engines run selar's own server
(continuous batching over `DecodeSession`s); an engine with its own server (vLLM) is launched
through its registry entry's `serve`."""

from __future__ import annotations

import os

import click

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
@model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address (0.0.0.0 exposes it to the network)")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set SELAR_API_KEY)")
@click.option("--max-batch", type=int, default=32, show_default=True, help="rows decoded at once")
@click.option("--max-queue", type=int, default=256, show_default=True, help="waiting requests before 503")
@method_option(help="default method of requests without one")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="server-wide option default, e.g. tau=0.4")
@click.option("--max-tokens", type=int, default=4096, show_default=True, help="largest max_tokens a request may ask")
@click.option("--max-prompt-tokens", type=int, default=8192, show_default=True)
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds per request")
@click.option("--body-timeout", type=float, default=30.0, show_default=True, help="seconds to receive a request body")
@click.option(
    "--prefill-chunk",
    type=int,
    default=512,
    show_default=True,
    help="prefill long prompts in chunks of this many tokens between decode steps (0: in one go)",
)
@click.option(
    "--fault-limit",
    type=int,
    default=3,
    show_default=True,
    help="consecutive decode faults before /health reports unhealthy (503)",
)
@dtype_option
@device_option
@engine_option
@compile_option
@click.option(
    "--vllm-arg",
    "vllm_args",
    multiple=True,
    metavar="FLAG",
    help="with --engine vllm: a flag for `vllm serve`, e.g. --vllm-arg=--tensor-parallel-size=2",
)
def serve(
    model,
    host,
    port,
    api_key,
    max_batch,
    max_queue,
    method,
    sets,
    max_tokens,
    max_prompt_tokens,
    max_body_bytes,
    timeout,
    body_timeout,
    prefill_chunk,
    fault_limit,
    dtype,
    device,
    engine,
    compile_mode,
    vllm_args,
):
    """Serve an OpenAI-compatible API (chat and completions, streaming) with SeLaR decoding.

    Example: selar serve --model smollm2-135m --port 8000
    """
    from ..engines import get_engine, load_model, load_options
    from ..engines.base import refuse_method
    from ..methods import all_option_names, make_config

    defaults = parse_sets(sets)
    bad = sorted(set(defaults) - all_option_names())
    if bad:
        fail(f"unknown option(s) {', '.join(bad)}")
    make_config(method, **options_for(method, defaults, False))
    spec = get_engine(engine)
    refuse_method(engine, spec.capabilities, method)  # the default method: before anything is loaded
    for name, v in (("max_batch", max_batch), ("max_queue", max_queue), ("max_tokens", max_tokens)):
        if v < 1:
            fail(f"{name} must be at least 1, got {v}")
    api_key = api_key or os.environ.get("SELAR_API_KEY")
    if not spec.capabilities.stepwise:  # an engine with its own scheduler and server
        spec.load().serve(
            model,
            host=host,
            port=port,
            api_key=api_key,
            max_batch=max_batch,
            method=method,
            defaults=defaults,
            max_prompt_tokens=max_prompt_tokens,
            max_tokens=max_tokens,
            dtype=dtype,
            extra_args=tuple(vllm_args),
        )
        return
    if vllm_args:
        fail("--vllm-arg needs --engine vllm")

    import uvicorn

    from ..server import Settings, build

    mdl = load_model(
        model,
        dtype=dtype,
        device=device,
        engine=engine,
        **load_options(engine, max_batch, max_tokens, prompt_room=max_prompt_tokens),
        **compile_load_options(engine, compile_mode),
    )
    mdl.expect_work(float("inf"))  # a server is the longest job: compile="auto" compiles
    warm_up = getattr(mdl, "warm_up", None)
    if warm_up is not None:
        seconds = warm_up(max_batch)  # compile before the first request rather than during it
        if seconds:
            click.echo(f"selar: compiled the decode step in {seconds:.0f} s", err=True)
    settings = Settings(
        model_name=model,
        api_key=api_key,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens=max_tokens,
        default_max_tokens=min(1024, max_tokens),
        max_body_bytes=max_body_bytes,
        timeout=timeout,
        body_timeout=body_timeout,
        default_method=method,
        defaults=defaults,
    )
    for name, v in (("prefill_chunk", prefill_chunk), ("fault_limit", fault_limit)):
        if v < 0:
            fail(f"{name} must be at least 0, got {v}")
    app, scheduler = build(
        mdl, settings, max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk, fault_limit=fault_limit
    )
    click.echo(
        f"selar: serving {model} on http://{host}:{port}/v1 (method {method}, max batch {max_batch}, engine {engine})",
        err=True,
    )
    for line in mdl.info.get("serve_notes", ()):  # what the engine wants an operator to know
        click.echo(f"selar: {line}", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        scheduler.stop()
