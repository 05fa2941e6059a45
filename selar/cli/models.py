"""`selar models`: the catalog of real models that install from PyPI."""

from __future__ import annotations

import json
from typing import Any

import click

from ..catalog import DEFAULT_MODEL
from .options import Group, fail


@click.group(cls=Group)
def models() -> None:
    """The catalog of real models that install from PyPI."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json) -> None:
    """Show the catalog, with size and whether each model is installed and pulled.

    Example: selar models list
    """
    from ..catalog import CATALOG, cache_dir, is_pulled, packages_installed

    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "upstream": e.upstream,
            "size_mb": round(e.size / 1e6),
            "license": e.license,
            "packages": len(e.packages),
            "installed": packages_installed(e),
            "pulled": is_pulled(e),
            "default": e.name == DEFAULT_MODEL,
            "note": e.note,
        }
        for e in CATALOG.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    fmt = "{:<22} {:>8} {:>10} {:>7}  {:<11} {}"
    click.echo(fmt.format("name", "size", "installed", "pulled", "license", "upstream"))
    for r in rows:
        click.echo(
            fmt.format(
                r["name"] + (" *" if r["default"] else ""),
                f"{r['size_mb']} MB",
                "yes" if r["installed"] else "no",
                "yes" if r["pulled"] else "no",
                r["license"],
                r["upstream"],
            )
        )
    click.echo(f"* default model. Cache: {cache_dir()} (set SELAR_CACHE to move it)")


@models.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="rebuild even if already pulled (repairs a corrupt cache)")
def models_pull(name, force) -> None:
    """Install, assemble, verify and convert a catalog model.

    Example: selar models pull smollm2-135m
    """
    import time

    from ..catalog import pull

    t0 = time.perf_counter()
    folder = pull(name, force=force, log=lambda s: click.echo(f"selar: {s}", err=True))
    click.echo(f"{name}: ready in {folder} ({time.perf_counter() - t0:.1f} s)")


@models.command("verify")
@click.argument("name")
def models_verify(name) -> None:
    """Check every file of a pulled model against its checksums.

    Example: selar models verify smollm2-135m
    """
    from ..catalog import get_entry, is_pulled, model_dir, verify_folder

    entry = get_entry(name)
    if not is_pulled(entry):
        fail(f"{name} is not pulled; run `selar models pull {name}`")
    verify_folder(model_dir(entry), full=True)
    click.echo(f"{name}: ok")
