"""Specs with absurd values, bad types, deep nesting, odd encodings and odd files: a clear SpecError for each,
quickly, never a traceback or a hang."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import yaml

from beamstream.errors import SpecError
from beamstream.spec import load_spec
from conftest import run_cli


def spec(**changes) -> dict:
    base = {"source": {"type": "simulated", "n_events": 10, "detectors": [{"kind": "image", "shape": [8, 8]}]},
            "sinks": [{"type": "files", "dir": "out"}]}
    for dotted, value in changes.items():
        node = base
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return base


def image(**fields) -> list:
    return [{"kind": "image", "shape": [8, 8], **fields}]


def dumped(**changes) -> bytes:
    return yaml.safe_dump(spec(**changes)).encode()


CASES: dict[str, bytes] = {
    # bad types
    "n_events-text": dumped(source__n_events="many"),
    "n_events-list": dumped(source__n_events=[1]),
    "n_events-map": dumped(source__n_events={"a": 1}),
    "n_events-fraction": dumped(source__n_events=1.5),
    "rate-text": dumped(source__rate_hz="fast"),
    "shape-text": dumped(source__detectors=image(shape="big")),
    "shape-floats": dumped(source__detectors=image(shape=[1e9, 1e9])),
    "detectors-text": dumped(source__detectors="image"),
    "detector-kind": dumped(source__detectors=[{"kind": "camera"}]),
    "steps-text": dumped(steps="batch"),
    "sinks-map": dumped(sinks={"type": "files"}),
    "files-dir-number": dumped(sinks=[{"type": "files", "dir": {"a": 1}}]),
    "top-list": b"- source\n- sinks\n",
    "top-scalar": b"42\n",
    "empty": b"",
    # values out of range
    "n_events-zero": dumped(source__n_events=0),
    "n_events-huge": dumped(source__n_events=10**19),
    "bank-negative": dumped(source__bank_size=-1),
    "bank-huge": dumped(source__bank_size=10**6),
    "shape-zero": dumped(source__detectors=image(shape=[0, 10])),
    "shape-axis-huge": dumped(source__detectors=image(shape=[2**21, 2])),
    "shape-dimensions": dumped(source__detectors=image(shape=[2] * 9)),
    "event-too-big": dumped(source__detectors=image(shape=[65536, 65536], dtype="uint16")),
    "samples-huge": dumped(source__detectors=[{"kind": "waveform", "samples": 10**9}]),
    "dtype-object": dumped(source__detectors=image(dtype="object")),
    "dtype-void": dumped(source__detectors=image(dtype="V10")),
    "dtype-unknown": dumped(source__detectors=image(dtype="nope")),
    "peaks-huge": dumped(source__detectors=image(peaks=10**7)),
    "events-per-read-zero": dumped(source__events_per_read=0),
    "events-per-read-huge": dumped(source__events_per_read=10**9),
    "seed-negative": dumped(source__seed=-1),
    "rate-huge": dumped(source__rate_hz=1e300),
    "rate-infinite": b"source: {type: simulated, rate_hz: .inf}\nsinks: [{type: files, dir: out}]\n",
    "rate-tiny": dumped(source__rate_hz=1.0e-300),
    "files-from-the-root": dumped(source={"type": "hdf5", "files": ["/**/*.nonexistent-ext"]}),
    "files-from-the-working-folder": dumped(source={"type": "hdf5", "files": ["**/*.h5"]}),
    "files-under-any-top-folder": dumped(source={"type": "hdf5", "files": ["/*/raw/*.h5"]}),
    "duplicate-key": b"source: {type: simulated, n_events: 10}\nsinks: [{type: files, dir: out}]\nsource: {type: hdf5}\n",
    "duplicate-nested-key": b"source: {type: simulated, n_events: 10, n_events: 20}\nsinks: [{type: files, dir: out}]\n",
    "no-detectors": dumped(source__detectors=[]),
    "batch-zero": dumped(steps=[{"type": "batch", "size": 0}]),
    "batch-huge": dumped(steps=[{"type": "batch", "size": 10**12}]),
    "roi-huge": dumped(steps=[{"type": "roi", "field": "image", "start": [0], "stop": [10**9]}]),
    "pad-huge": dumped(steps=[{"type": "pad", "field": "image", "shape": [10**9]}]),
    "bin-empty": dumped(steps=[{"type": "bin", "field": "image", "factors": []}]),
    "cast-object": dumped(steps=[{"type": "cast", "dtype": "object"}]),
    "serializer-unknown": dumped(serializer={"type": "pickle"}),
    "hdf5-level": dumped(serializer={"type": "hdf5", "level": 99}),
    "no-sinks": dumped(sinks=[]),
    "stream-no-port": dumped(sinks=[{"type": "stream", "endpoint": "tcp://x"}]),
    "stream-http": dumped(sinks=[{"type": "stream", "endpoint": "http://x:1"}]),
    "stream-hwm-zero": dumped(sinks=[{"type": "stream", "endpoint": "tcp://127.0.0.1:1", "hwm": 0}]),
    "buffer-size": dumped(buffer={"max_memory": "lots"}),
    "buffer-port": dumped(buffer={"metrics_port": 70000}),
    "buffer-backend": dumped(buffer={"backend": "nats://"}),
    # shapes of the text itself
    "huge-integer": b"source: {type: simulated, n_events: " + b"9" * 5000 + b"}\nsinks: [{type: files, dir: out}]\n",
    "deep-lists": b"source: " + b"[" * 2000 + b"]" * 2000 + b"\n",
    "deep-maps": b"".join(b"  " * i + b"k:\n" for i in range(100)) + b"  " * 100 + b"v\n",
    "many-values": b"name: [" + b"1," * 150_000 + b"1]\n",
    "alias-bomb": b'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                  b'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n',
    "python-tag": b"source: !!python/object/apply:os.system ['true']\n",
    "not-yaml": b"source: {type: simulated\n",
    "nul-bytes": b"source:\x00 {}\n",
    "latin-1": "name: d\xe9tecteur\n".encode("latin-1"),
    "utf-16": "name: x\n".encode("utf-16"),
    "too-big": b"# " + b"x" * (1 << 20) + b"\n",
}


@pytest.fixture
def odd_files(tmp_path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    device = tmp_path / "device.yaml"
    device.symlink_to("/dev/zero")
    directory = tmp_path / "directory.yaml"
    directory.mkdir()
    return {"fifo": fifo, "device": device, "directory": directory}


def write_cases(folder: Path) -> list[Path]:
    paths = []
    for name, content in CASES.items():
        path = folder / f"{name}.yaml"
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_there_are_at_least_sixty_hostile_specs(odd_files):
    assert len(CASES) + len(odd_files) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_hostile_spec_gets_a_clear_error_quickly(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(CASES[name])
    started = time.monotonic()
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert time.monotonic() - started < 20.0  # unguarded, several take minutes or all the memory
    assert str(path) in str(raised.value)
    assert not re.search(r"function-(after|before|wrap|plain)\[|<class '|\.simulated\.", str(raised.value)), \
        "the validation library's own words"


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_odd_files_are_named_not_read(odd_files, kind):
    with pytest.raises(SpecError, match=f"is a {'FIFO' if kind == 'fifo' else kind if kind == 'directory' else 'device'}"):
        load_spec(odd_files[kind])


def test_spec_check_reports_every_hostile_spec_without_a_traceback(tmp_path, odd_files):
    paths = write_cases(tmp_path) + list(odd_files.values())
    result = run_cli("spec", "check", *map(str, paths), timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("✗") == len(paths), result.stderr[-3000:]


def test_a_step_reading_a_field_the_source_does_not_produce_is_found_by_spec_check(write_spec):
    path = write_spec(spec(steps=[{"type": "roi", "field": "imagex", "start": [0, 0], "stop": [4, 4]},
                                  {"type": "select", "fields": ["image"]},
                                  {"type": "cast", "fields": ["image_peaks"], "dtype": "float32"}]))
    result = run_cli("spec", "check", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "steps[0] (roi): field 'imagex' is not there; the batches have: image, image_peaks" in result.stderr
    assert "steps[2] (cast): field 'image_peaks' is not there; the batches have: image" in result.stderr


def _refused_at_start(write_spec, tmp_path, source: dict, steps: list, expected: str) -> None:
    """``produce`` stops with a clear error naming ``expected`` within seconds, no traceback, no file."""
    path = write_spec({"source": source, "steps": steps, "sinks": [{"type": "files", "dir": str(tmp_path / "out")}]})
    started = time.monotonic()
    result = run_cli("produce", str(path), timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert expected in result.stderr and "GB available" in result.stderr, result.stderr[-2000:]
    assert not list((tmp_path / "out").glob("*.h5"))


def test_a_simulated_bank_larger_than_memory_is_refused_at_start(write_spec, tmp_path):
    detectors = [{"kind": "image", "shape": [16384, 16384], "dtype": "uint16"}]  # 512 MiB per frame
    _refused_at_start(write_spec, tmp_path, {"type": "simulated", "n_events": 10, "bank_size": 60000,
                                             "detectors": detectors}, [], "lower bank_size")


def test_an_hdf5_read_larger_than_memory_is_refused_at_start(write_spec, tmp_path):
    """A dataset whose frames declare 1 GB each (never written, so the file is small), read 100,000 at a time."""
    import h5py

    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("frames", shape=(4, 32768, 32768), dtype="uint8", chunks=(1, 1024, 1024))
    source = {"type": "hdf5", "files": [str(path)], "datasets": {"data": "/frames"}, "events_per_read": 100000}
    _refused_at_start(write_spec, tmp_path, source, [], "lower events_per_read")


def test_a_batch_larger_than_memory_is_refused_at_its_first_event(write_spec, tmp_path):
    source = {"type": "simulated", "n_events": 10, "bank_size": 1, "events_per_read": 1,
              "detectors": [{"kind": "image", "shape": [1024, 1024], "dtype": "uint16"}]}  # 2 MiB per event
    _refused_at_start(write_spec, tmp_path, source, [{"type": "batch", "size": 10_000_000}], "lower size")


def test_a_duplicate_key_is_named_with_its_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_bytes(CASES["duplicate-key"])
    with pytest.raises(SpecError, match=r"twice.yaml: key 'source' appears twice in one mapping \(lines 1 and 3\)"):
        load_spec(path)


def test_patterns_that_match_too_many_files_are_refused_when_read(tmp_path, monkeypatch):
    import beamstream.sources.hdf5 as hdf5_source
    from beamstream.errors import SourceError

    for index in range(5):
        (tmp_path / f"{index}.h5").touch()
    monkeypatch.setattr(hdf5_source, "MAX_FILES", 4)
    with pytest.raises(SourceError, match="matches more than 4 files"):
        hdf5_source.expand_files([str(tmp_path / "*.h5")])
    assert len(hdf5_source.expand_files([str(tmp_path / "[0-3].h5")])) == 4
