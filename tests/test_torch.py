"""beamstream.torch.StreamDataset in real DataLoaders (worker processes) over a real buffer and a real request
service, and the example that trains on a stream (examples/train_peaks.py)."""

from __future__ import annotations

import gc
import random
import re
import sys
import threading
from itertools import islice
from pathlib import Path

import httpx
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'beamstream[torch]')")

from beamstream.buffer.local import LocalBuffer  # noqa: E402
from beamstream.client import Client, Event  # noqa: E402
from beamstream.errors import OptionError, StreamIncomplete  # noqa: E402
from beamstream.producer import run_local  # noqa: E402
from beamstream.spec import parse_spec  # noqa: E402
from beamstream.torch import StreamDataset, as_tensor, shuffled  # noqa: E402
from conftest import run_or_show_stacks, waveform_spec  # noqa: E402
from servicekit import run_service, stop_service  # noqa: E402

EXAMPLE = Path(__file__).parent.parent / "examples" / "train_peaks.py"
WORKER_TIMEOUT_S = 120  # a DataLoader worker that sends no batch for this long fails the test (a hung worker, e.g. one
# forked while a thread of this process held a lock, would otherwise hang the suite)


def seq_of(event: Event) -> int:
    return event.seq


def read_epoch(loader) -> dict[int, bytes]:
    """Every sample of one pass over ``loader`` (inputs, seq) as {seq: the input's bytes}; a seq met twice fails."""
    samples: dict[int, bytes] = {}
    for inputs, seqs in loader:
        for row, seq in zip(inputs, seqs.tolist(), strict=True):
            assert seq not in samples, f"event {seq} came twice in one epoch"
            samples[seq] = row.numpy().tobytes()
    return samples


@pytest.fixture
def buffer(tmp_path):
    service = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", max_bytes=64 << 20).start()
    yield service
    service.close()


def produce(spec, **options) -> tuple[threading.Thread, dict]:
    """``spec``'s producers (one worker) on a thread; the dict gets their RunResult as ``"run"``."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("run", run_local(spec, 1, **options)))
    thread.start()
    return thread, outcome


def test_two_workers_share_a_live_buffer_stream_once_and_the_next_epoch_replays_it(buffer, tmp_path):
    producers, outcome = produce(waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=200, samples=64))
    dataset = StreamDataset(f"ipc://{tmp_path / 'out'}", inputs="waveform", targets=seq_of, shuffle=16)
    loader = dataset.loader(batch_size=8, num_workers=2, timeout=WORKER_TIMEOUT_S)
    live = read_epoch(loader)  # epoch 0, as group "train", while the stream is produced
    producers.join(timeout=120)
    assert outcome["run"].ok, outcome["run"].errors
    assert sorted(live) == list(range(200)), "every event exactly once, shared by the two workers"
    bank = waveform_spec("ipc://unused", samples=64).source.open().bank()["waveform"]  # what the source sends
    assert all(row == bank[seq % len(bank)].tobytes() for seq, row in live.items()), "each input is its waveform"
    dataset.set_epoch(1)
    assert read_epoch(loader) == live, "epoch 1 (group train-epoch1) replays the same events, the same bytes"
    assert set(buffer.message_log.groups) == {"train", "train-epoch1"}
    iterator = iter(loader)
    with pytest.raises(RuntimeError, match=r"epoch 1 \(group 'train-epoch1'\) was read already: call set_epoch\(2\)"):
        read_epoch(iterator)
    del iterator  # its workers are shut down (joined) before the next epoch is set: a worker of it that had not
    gc.collect()  # started its part yet would otherwise start it after set_epoch(2), as a reader of epoch 2
    dataset.set_epoch(2)
    alone = [seq for _, seq in torch.utils.data.DataLoader(dataset, batch_size=None)]  # num_workers=0
    assert sorted(alone) == list(range(200)), "without workers, the process itself reads every event"


def test_over_shared_memory_every_sample_keeps_its_bytes_while_the_slots_are_reused(tmp_path):
    """Over shm:// a message's arrays are views of a slot that goes back to its producer once the worker asks for
    the next message, and a batch gathers samples of several messages: with three slots (320 KiB messages) reused over and over, every
    sample is still its event's waveform (the dataset reads copies there)."""
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 300, "events_per_read": 5, "bank_size": 7,
                   "detectors": [{"kind": "waveform", "samples": 16384, "dtype": "float32"}]},
        "sinks": [{"type": "stream", "endpoint": f"shm://{tmp_path}/in", "shm_bytes": 1 << 20}],
    })
    buffer = LocalBuffer(f"shm://{tmp_path}/in", f"shm://{tmp_path}/out", max_bytes=64 << 20).start()
    try:
        producers, outcome = produce(spec)
        dataset = StreamDataset(f"shm://{tmp_path}/out", inputs="waveform", targets=seq_of)
        samples = read_epoch(dataset.loader(batch_size=8, num_workers=2, timeout=WORKER_TIMEOUT_S))
        producers.join(timeout=120)
    finally:
        buffer.close()
    assert outcome["run"].ok, outcome["run"].errors
    assert sorted(samples) == list(range(300))
    bank = spec.source.open().bank()["waveform"]
    assert [seq for seq, row in samples.items() if row != bank[seq % len(bank)].tobytes()] == []
    with pytest.raises(OptionError, match="copy"):
        StreamDataset(f"shm://{tmp_path}/out", copy=False)


def test_an_incomplete_stream_raises_out_of_the_dataloader_instead_of_ending_the_epoch(buffer, tmp_path):
    stop = threading.Event()
    producers, outcome = produce(waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=400, rate_hz=100, samples=64),
                                 stop=stop)
    dataset = StreamDataset(f"ipc://{tmp_path / 'out'}", inputs="waveform", targets=seq_of)
    seen = 0
    with pytest.raises(StreamIncomplete, match="ended incomplete") as raised:
        for _, seqs in dataset.loader(batch_size=4, num_workers=2, timeout=WORKER_TIMEOUT_S):
            seen += len(seqs)
            stop.set()  # the producer is told to stop once a batch came: it ends its share "aborted"
    producers.join(timeout=120)
    assert 4 <= seen < 400 and not outcome["run"].ok
    assert "aborted" in str(raised.value), "the message carries the buffer's verdict from the worker"


def test_a_sealed_service_stream_read_through_the_relay_by_two_workers_once_per_epoch(tmp_path):
    """A stream asked of a request service, read through its relay with its key (from the request's answer).
    The service stops a buffer once every group has read everything, so a witness group holds the stream open
    between the epochs: it reads every event and leaves its last message unacknowledged until the end."""
    process, url = run_service(tmp_path, drain_grace_s="120")
    try:
        answer = httpx.post(f"{url}/v1/streams", json={"spec": {"source": {
            "type": "simulated", "n_events": 120, "events_per_read": 5,
            "detectors": [{"kind": "waveform", "samples": 64}]}}, "resources": {"workers": 2}}, timeout=30)
        assert answer.status_code == 201, answer.text
        stream_url, key = f"{url}/v1/streams/{answer.json()['id']}", answer.json()["credentials"]["key"]
        with Client(stream_url, group="witness", timeout=60, key=key) as witness:
            events = witness.events()
            assert sorted(event.seq for event in islice(events, 120)) == list(range(120))
            dataset = StreamDataset(stream_url, inputs="waveform", targets=seq_of, key=key, group="relay")
            loader = dataset.loader(batch_size=8, num_workers=2, timeout=WORKER_TIMEOUT_S)
            first = read_epoch(loader)
            dataset.set_epoch(1)
            assert sorted(first) == list(range(120)) and read_epoch(loader) == first
            assert list(events) == [], "the witness's stream ends when it asks for more"
        assert witness.report.complete and witness.report.events == 120
    finally:
        stop_service(process, url)


def test_the_example_trains_on_a_stream_and_its_loss_falls():
    done = run_or_show_stacks([sys.executable, str(EXAMPLE), "--events", "128", "--epochs", "3"], timeout=300)
    assert done.returncode == 0, done.stderr
    losses = [float(loss) for loss in re.findall(r"^epoch \d: loss ([\d.]+) over 128 samples", done.stdout, re.M)]
    assert len(losses) == 3, done.stdout
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] / 2, losses


def test_shuffling_mixes_within_its_window_and_keeps_every_sample():
    mixed = list(shuffled(range(100), 10, random.Random(0)))
    assert sorted(mixed) == list(range(100)) and mixed != list(range(100))
    assert all(value <= position + 10 for position, value in enumerate(mixed)), "nothing comes out before it came in"
    assert list(shuffled(range(5), 0, random.Random(0))) == [0, 1, 2, 3, 4]


def test_a_fields_tensor_is_a_view_of_the_received_array_not_a_copy():
    received = np.arange(12, dtype=np.uint16).reshape(3, 4)
    received.setflags(write=False)  # as the Client hands arrays out
    tensor = as_tensor(received)
    assert tensor.data_ptr() == received.ctypes.data and tensor.dtype == torch.uint16 and tensor.shape == (3, 4)


def test_options_the_dataset_sets_itself_are_refused():
    with pytest.raises(OptionError, match="takes no lossy, bind option"):
        StreamDataset("tcp://127.0.0.1:1", lossy=True, bind=True)
    with pytest.raises(OptionError, match="in_order=False"):
        StreamDataset("tcp://127.0.0.1:1").loader(in_order=True)
