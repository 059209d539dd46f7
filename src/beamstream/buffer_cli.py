"""``beamstream buffer``: run a buffer; ``beamstream buffer status``: show a running one.

The command's options are made from :class:`~beamstream.buffer.config.BufferConfig`, one per field: the field's
description (and default) is its help, its type the option's (a size, such as ``2GiB``, is taken as text and read
by the model), and a field in seconds (``retention_s``) is the option without the suffix (``--retention``). A
field's old name (:data:`~beamstream.buffer.config.RENAMED`: ``--producers``, ``--consumers``) is still taken, hidden
from the help, and read as the new one with a warning.
Only the words shown for what each takes (``ENDPOINT``, ``PORT``) are listed here (:data:`METAVARS`).

This module is beside the buffer package, not in it: a buffer started by a request service reports to it
(:mod:`beamstream.service.callbacks`), and the buffer package must not import the service, which imports it.
"""

from __future__ import annotations

import inspect
import json
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from beamstream.buffer.config import RENAMED, BufferConfig, Size
from beamstream.display import console, fail

if TYPE_CHECKING:
    from beamstream.buffer.base import Buffer

buffer_app = typer.Typer(subcommand_metavar="[COMMAND] [ARGS]...")

# what the help shows an option takes, where the field's type does not say it well enough
METAVARS = {"producer_endpoint": "ENDPOINT", "consumer_endpoint": "ENDPOINT", "hwm": "MESSAGES", "metrics_port": "PORT",
            "metrics_addr": "ADDRESS", "spill_dir": "DIR", "backend": "URL", "admission_key_file": "FILE"}
SECONDS_SUFFIX = "_s"  # a field in seconds: its option drops the suffix and takes SECONDS


def option_name(field: str) -> str:
    """The command-line option of the BufferConfig field ``field``: ``max_memory`` → ``--max-memory``,
    ``retention_s`` → ``--retention``."""
    return "--" + field.removesuffix(SECONDS_SUFFIX).replace("_", "-")


def _is_size(metadata: list[Any]) -> bool:
    """Whether a field with ``metadata`` is a :data:`~beamstream.buffer.config.Size` (written as text, e.g. 2GiB)."""
    return all(part in metadata for part in Size.__metadata__[1:])


def _plain_type(field: FieldInfo) -> tuple[type, list[Any]]:
    """The type of ``field`` without ``None`` and ``Annotated``, and the metadata those carried."""
    annotation, metadata = field.annotation, list(field.metadata)
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        metadata += more
    return annotation, metadata


def _option(name: str, field: FieldInfo) -> inspect.Parameter:
    """The keyword parameter that makes field ``name`` an option of the command: None when not given."""
    kind, metadata = _plain_type(field)
    if _is_size(metadata):
        kind, metavar = str, "SIZE"
    elif name.endswith(SECONDS_SUFFIX):
        metavar = "SECONDS"
    else:
        metavar = METAVARS.get(name) or {int: "N", str: "TEXT", float: "NUMBER"}.get(kind, "PATH")
    option = typer.Option(option_name(name), metavar=metavar, help=BufferConfig.option_help(name))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], option])


def _old_option(old: str) -> inspect.Parameter:
    """The hidden option of a field's old name ``old`` (a key of :data:`RENAMED`), passed on under that name."""
    option = typer.Option(option_name(old), hidden=True, help=f"the old name of {option_name(RENAMED[old])}")
    return inspect.Parameter(old, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], option])


def _with_config_options(command: Any) -> Any:
    """``command``, taking besides its own parameters one option per BufferConfig field (passed in ``**given``)."""
    own = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for parameter in inspect.signature(command, eval_str=True).parameters.values()
           if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
    generated = [_option(name, field) for name, field in BufferConfig.model_fields.items()]
    generated += [_old_option(old) for old in RENAMED]
    command.__signature__ = inspect.Signature([*own[:-1], *generated, own[-1]])  # --callback last, as ever
    return command


@buffer_app.callback(invoke_without_command=True)
@_with_config_options
def buffer(
    ctx: typer.Context,
    spec: Annotated[Optional[Path], typer.Option(
        metavar="SPEC", help="take the settings from this stream spec's buffer: section (options given here "
                             "override them)")] = None,
    callback: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="tell the request service that started this buffer where it listens and, at the end, the "
             "stream's verdict (a file the service wrote: its URL and the stream's secret, read again at every "
             "attempt, so a service restarted elsewhere is found)")] = None,
    **given: Any,
) -> None:
    """Run a buffer: producers in, consumer groups out, bounded memory, acknowledged delivery.

    `beamstream buffer status URL` instead shows a running buffer (and serves nothing).
    """
    if ctx.invoked_subcommand is not None:
        return
    serve_buffer(buffer_config(spec, {name: value for name, value in given.items() if value is not None}), callback)


def buffer_config(spec: Path | None, given: dict[str, object]) -> BufferConfig:
    """The buffer settings: the spec's ``buffer:`` section (if a spec is named) overridden by ``given`` options."""
    from pydantic import ValidationError

    from beamstream.spec import load_spec

    base: dict[str, object] = {}
    if spec is not None:
        section = load_spec(spec).buffer
        if section is None:
            fail(f"{spec} has no buffer: section; add one (`beamstream spec schema` lists its keys) or pass options",
                 code=2)
        base = section.model_dump(exclude_unset=True)
    try:
        return BufferConfig.model_validate({**base, **given})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            text = error["msg"].removeprefix("Value error, ")
            if error["loc"]:
                text = f"{option_name(str(error['loc'][0]))}: {text}"
            problems.append(text)
        fail("; ".join(problems), code=2)


def serve_buffer(config: BufferConfig, callback: Path | None = None) -> None:
    """Run the buffer ``config`` describes until SIGTERM or Ctrl-C, then print its account of the stream
    (and, with ``callback``, tell the request service where it listened and, at the end, the verdict)."""
    from msgspec import to_builtins

    from beamstream.atomic import write_atomically
    from beamstream.buffer.run import run_buffer
    from beamstream.service.callbacks import VERDICT_FILE, call_back, end_when_orphaned

    orphaned = threading.Event()
    unheard = threading.Event()  # the service never took the call-back saying where the buffer listens

    def say_where(buffer: Buffer) -> None:
        memory = "" if config.backend else f", memory ≤ {config.max_memory / 2**30:g} GiB"
        metrics = f", metrics → {buffer.metrics_server.url}" if buffer.metrics_server else ""
        console.print(f"buffer: producers → {buffer.producer_address}, consumers → {buffer.consumer_address}{memory}"
                      f"{metrics}", highlight=False)
        if callback is None:
            return
        told = call_back(callback, {"event": "listening", "producers": buffer.producer_address,
                                    "consumers": buffer.consumer_address,
                                    "metrics": buffer.metrics_server.url if buffer.metrics_server else None},
                         retry_for_s=config.callback_retry_s, give_up=lambda: buffer.stopping)
        if told or buffer.stopping:
            end_when_orphaned(buffer, callback, config.orphan_after_s, orphaned)
        else:  # nobody can be told where it listens: it ends now rather than as orphaned, orphan_after_s later
            unheard.set()
            buffer.stop()

    report = run_buffer(config, on_ready=say_where)
    console.print(report.summary(), highlight=False)
    if callback is not None:  # the verdict goes to a file beside the callback file first: the service reads it
        verdict = to_builtins(report.final_verdict())  # there should the callback not arrive
        write_atomically(callback.with_name(VERDICT_FILE), json.dumps(verdict).encode())
        gone = orphaned.is_set() or unheard.is_set()  # told once, not tried again for a minute
        call_back(callback, {"event": "ended", "verdict": verdict}, retry_for_s=0 if gone else 60.0)
    if unheard.is_set():
        fail(f"ended: the request service never took this buffer's call-back saying where it listens (tried for "
             f"{config.callback_retry_s:g} s; why: above), so no producer or reader could be told where to go")


@buffer_app.command("status")
def buffer_status(
    target: Annotated[str, typer.Argument(help="the buffer's metrics: URL or HOST:PORT, e.g. 127.0.0.1:9100",
                                          metavar="URL")],
) -> None:
    """Show a running buffer's totals, groups and consumers, read from its metrics endpoint."""
    from rich.console import Console

    from beamstream.buffer.status import status_tables
    from beamstream.metrics_reading import fetch_status

    out = Console()
    for table in status_tables(fetch_status(target)):
        out.print(table)
