"""The command line says what happened in plain words: a producer whose buffer stopped, help that shows what each
option takes, the same short options everywhere, spec errors located as the spec writes them, install hints that
keep their brackets."""

from __future__ import annotations

import re
import signal
import time
from importlib.metadata import metadata
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from beamstream.cli import app
from beamstream.cli_help import readable_type
from beamstream.client import Client
from beamstream.display import fail
from beamstream.errors import SpecError, needs_extra
from beamstream.spec import parse_spec
from conftest import banner, run_cli, start_cli, wait_until

# --- a producer whose buffer stopped ------------------------------------------------------


def test_a_producer_whose_buffer_stopped_fails_within_reconnect_s_saying_why(tmp_path, write_spec):
    """SIGTERM to the buffer mid-stream: the producer says at once that it lost it, and after reconnect_s (here 3 s,
    not send_timeout_s's 300) ends failed, naming the endpoint, how long ago and what to do."""
    endpoints = (f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}")
    buffer = start_cli("buffer", "--producer-endpoint", endpoints[0], "--consumer-endpoint", endpoints[1])
    producer = None
    try:
        assert "buffer: producers" in banner(buffer)
        path = write_spec({"source": {"type": "simulated", "n_events": 100_000, "rate_hz": 100, "events_per_read": 5,
                                      "detectors": [{"kind": "waveform", "samples": 64}]},
                           "sinks": [{"type": "stream", "endpoint": endpoints[0], "reconnect_s": 3}]})
        producer = start_cli("produce", str(path))
        with Client(endpoints[1], group="g", timeout=60) as client:
            events = client.events()
            for _ in range(10):
                next(events)
        buffer.send_signal(signal.SIGTERM)
        buffer.communicate(timeout=30)
        stopped = time.monotonic()
        wait_until(lambda: producer.poll() is not None, "the producer to give up", timeout=60)
        took = time.monotonic() - stopped
        _, err = producer.communicate(timeout=30)
    finally:
        for process in (buffer, producer):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
    err = " ".join(err.split())  # rich wraps long lines
    assert producer.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert took < 20, f"the producer took {took:.0f} s to give up"
    assert f"the buffer or consumer at {endpoints[0]} disconnected (stopped?); waiting up to 3 s" in err
    assert re.search(rf"worker 0 failed: the buffer or consumer at {re.escape(endpoints[0])} stopped taking messages: "
                     r"it disconnected \d+ s ago and is not back \(\d+ message\(s\) unacknowledged\); restart it and "
                     r"run the producer again", err), err[-2000:]
    assert "failed" in err


# --- help shows what each option takes ------------------------------------------------------


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = [" ".join(path) for path, _ in _commands(typer.main.get_command(app))]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_typer_type_labels_and_nothing_for_flags(command):
    result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"}, prog_name="beamstream")
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(bool|str|int|float|path|list|uuid|datetime)\b", result.output), result.output
    for line in result.output.splitlines():
        if re.match(r"^│ --help\s", line):
            assert line.split()[2:4] == ["Show", "this"], line  # no type between the flag and its help


def test_help_names_types_as_click_did():
    output = CliRunner().invoke(app, ["consume", "--help"], env={"COLUMNS": "200"}).output
    rows = {line.split()[1]: line for line in output.splitlines() if line.startswith("│ --")}
    assert re.search(r"--force\s+overwrite", rows["--force"])
    assert re.search(r"-n\s+INTEGER \[x>=1\]\s+stop after", rows["--max-events"])
    assert re.search(r"SECONDS\s+seconds of silence", rows["--timeout"])
    assert re.search(r"-o\s+PATH\s+directory", rows["--out"])


@pytest.mark.parametrize("label, shown", [("<int range>", "INTEGER"), ("<list[str]>", "TEXT"), ("<path>", "PATH"),
                                          ("<int,int>", "INTEGER INTEGER"), ("<float>", "FLOAT"), ("<a|b>", "[a|b]")])
def test_readable_type(label, shown):
    assert readable_type(label) == shown


# --- the same short options and argument names everywhere --------------------------------------


def _parsed(*args: str) -> dict:
    root = typer.main.get_command(app)
    command = root.commands[args[0]]
    return command.make_context(args[0], list(args[1:])).params


def test_short_options_are_the_same_in_every_command():
    assert _parsed("demo", "-w", "3", "-n", "7")["workers"] == 3
    assert _parsed("demo", "-w", "3", "-n", "7")["events"] == 7
    assert _parsed("produce", "spec.yaml", "-w", "3")["workers"] == 3
    assert _parsed("consume", "tcp://h:1", "-n", "5", "-o", "out")["max_events"] == 5
    meanings: dict[str, set[str]] = {}
    for _, command in _commands(typer.main.get_command(app)):
        for param in (param for param in command.params if param.param_type_name == "option"):
            shorts = [name for name in param.opts if not name.startswith("--")]
            longs = [name for name in param.opts if name.startswith("--")]
            for short in shorts:
                meanings.setdefault(short, set()).update(longs)
    assert meanings["-w"] == {"--workers"} and meanings["-o"] == {"--out"}
    assert meanings["-n"] <= {"--events", "--max-events"}
    assert all(len(longs) == 1 for short, longs in meanings.items() if short != "-n"), meanings


def test_arguments_are_named_in_capitals():
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if param.param_type_name == "argument":
                assert param.metavar and param.metavar.isupper(), (path, param.name, param.metavar)


# --- spec errors located as the spec writes them ------------------------------------------


def spec_with(step: dict) -> dict:
    return {"source": {"type": "simulated", "n_events": 4, "detectors": [{"kind": "image", "shape": [8, 8]}]},
            "steps": [{"type": "batch", "size": 2}, step], "sinks": [{"type": "files", "dir": "out"}]}


@pytest.mark.parametrize("constants, expected", [
    ({"file": "p.txt"}, "steps[1].pedestal: cannot read constants from p.txt: expected a file ending in .npy, .h5, "
                        ".hdf5, .cxi"),
    ({"file": "p.h5"}, "steps[1].pedestal: p.h5 is an HDF5 file; say which array to read with `dataset: /path/in/file`"),
    ({"file": "p.npy", "x": 1}, "steps[1].pedestal.x: unknown option; allowed: file, dataset, frame"),
    ({"dataset": "/x"}, "steps[1].pedestal.file: required, not given"),
    ({"file": 1}, "steps[1].pedestal.file: expected a path; got 1"),
    ("abc", "steps[1].pedestal: expected a number or a mapping (file, dataset, frame); got 'abc'"),
])
def test_spec_errors_read_as_the_yaml_path_without_validation_internals(constants, expected):
    with pytest.raises(SpecError) as raised:
        parse_spec(spec_with({"type": "calibrate", "field": "image", "pedestal": constants}))
    assert str(raised.value).splitlines() == ["spec: 1 problem(s) in the stream spec:", f"  {expected}"]


def test_spec_errors_drop_plugin_tags_and_class_names():
    spec = spec_with({"type": "batch", "size": 2})
    spec["source"]["detectors"] = [{"kind": "camera"}]
    spec["sinks"] = [{"type": "files", "dir": {"a": 1}}]
    with pytest.raises(SpecError) as raised:
        parse_spec(spec)
    assert str(raised.value).splitlines()[1:] == [
        "  source.detectors[0].type: unknown 'camera'; expected one of: image, waveform",
        "  sinks[0].dir: expected a path; got {'a': 1}",
    ]


# --- install hints and messages keep their brackets ---------------------------------------


def test_needs_extra_names_the_extra_and_what_is_missing():
    assert needs_extra("the NATS backend", "nats", package="nats-py", cause="No module named 'nats'") == (
        "the NATS backend needs nats-py: pip install 'beamstream[nats]' (No module named 'nats')")
    assert needs_extra("beamstream service", "service") == (
        "beamstream service needs the 'service' extra: pip install 'beamstream[service]'")


def test_every_extra_an_install_hint_names_exists():
    extras = set(metadata("beamstream").get_all("Provides-Extra"))
    source = Path(__file__).parents[1] / "src" / "beamstream"
    named = set()
    for path in source.rglob("*.py"):
        named.update(re.findall(r"needs_extra\([^)]*?, \"(\w+)\"", path.read_text()))
        named.update(re.findall(r"pip install 'beamstream\[(\w+)\]'", path.read_text()))
    assert {"nats", "mpi", "psana"} <= named and named <= extras, (named, extras)


def test_fail_prints_brackets_as_they_are(capsys):
    with pytest.raises(typer.Exit):
        fail("pip install 'beamstream[service]' for [bold]x[/bold]")
    assert "error: pip install 'beamstream[service]' for [bold]x[/bold]" in capsys.readouterr().err


def test_errors_with_brackets_in_them_keep_them(tmp_path):
    bad = tmp_path / "run[ab].yaml"
    bad.write_text("source: {type: simulated, n_eventz: 4}\nsinks: [{type: files, dir: out}]\n")
    checked = run_cli("spec", "check", str(bad))
    assert checked.returncode == 1 and f"✗ {bad}: 1 problem(s)" in checked.stderr, checked.stderr
    produced = run_cli("produce", str(bad))
    assert produced.returncode == 1 and f"error: {bad}: 1 problem(s)" in produced.stderr, produced.stderr
