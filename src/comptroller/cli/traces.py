"""``comptroller traces convert``: other systems' LLM-call logs -> our normalised JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from comptroller.cli.common import console, user_errors
from comptroller.replay.importers import FORMATS, convert, write_jsonl
from comptroller.replay.trace import TraceError

__all__ = ["register"]

traces_app = typer.Typer(help="Convert trace files between formats.", no_args_is_help=True)


@traces_app.command("convert")
@user_errors(TraceError, ValueError, FileNotFoundError)
def traces_convert(
    paths: Annotated[list[Path], typer.Argument(help="Source files", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="The JSONL file to write")],
    trace_format: Annotated[str, typer.Option("--format", help=" | ".join(FORMATS))] = "auto",
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip and count invalid rows")] = False,
) -> None:
    """Write the calls of OTel, LiteLLM, Langfuse or Helicone exports as normalised JSONL (data/traces/README.md)."""
    objects, skipped = convert(paths, trace_format, skip_invalid=skip_invalid)
    written = write_jsonl(objects, out)
    note = f" ({skipped:,} invalid rows skipped)" if skipped else ""
    console.print(f"{written:,} calls written to {out}{note}")


def register(app: typer.Typer) -> None:
    """Add the ``traces`` command group to the CLI."""
    app.add_typer(traces_app, name="traces")
