"""What beamstream writes is private by default: files 0600, the directories it creates 0700, ipc sockets owner-only."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from beamstream.batch import Batch, Share
from beamstream.buffer.local import LocalBuffer
from beamstream.client import Client
from beamstream.errors import TransportError
from beamstream.producer import run_local
from beamstream.saving import MessageSaver
from beamstream.serializers.arrays import ArraysSerializer
from beamstream.sinks.files import FilesSink
from beamstream.stages import SinkContext
from beamstream.wire import EndMessage, message_from_batch
from conftest import waveform_spec


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def a_message(index: int = 0):
    batch = Batch(np.arange(2) + 2 * index, np.zeros(2), {"data": np.ones((2, 3), np.uint16)})
    return message_from_batch(batch, ArraysSerializer().build(), stream="s", rank=0, producers=1, index=index,
                              share=Share(rank=0, producers=1, stop=4))


def test_spill_files_groups_and_ipc_sockets_are_private(tmp_path):
    spill = tmp_path / "new" / "spill"
    buffer = LocalBuffer(f"ipc://{tmp_path / 'in'}", f"ipc://{tmp_path / 'out'}", spill=spill).start()
    try:
        with Client(f"ipc://{tmp_path / 'out'}", group="g", timeout=60) as client:
            assert run_local(waveform_spec(f"ipc://{tmp_path / 'in'}", n_events=20), workers=1).ok
            assert len(list(client.events())) == 20
    finally:
        buffer.close()
    assert mode(spill) == mode(spill.parent) == 0o700 and mode(spill / "ends") == 0o700
    written = [path for path in spill.rglob("*") if path.is_file()]
    assert {path.suffix for path in written} >= {".bss", ".idx", ".json"}
    assert {mode(path) for path in written} == {0o600}, {str(path): oct(mode(path)) for path in written}
    assert mode(tmp_path / "in") & 0o077 == 0 and mode(tmp_path / "out") & 0o077 == 0


@pytest.mark.parametrize("layout", ["messages", "cxi"])
def test_files_sink_output_is_private_and_the_mode_can_be_set(tmp_path, monkeypatch, layout):
    for setting, expected_file, expected_dir in ((None, 0o600, 0o700), ("640", 0o640, 0o750)):
        if setting:
            monkeypatch.setenv("BEAMSTREAM_FILE_MODE", setting)
        out = tmp_path / f"out-{setting}" / layout
        sink = FilesSink(dir=str(out), layout=layout).open(SinkContext(stream_id="s", rank=0, producers=1))
        sink.send(a_message())
        sink.close(EndMessage(stream="s", rank=0, producers=1, share=Share(rank=0, producers=1, stop=4),
                              messages=1, events=2, last_seq=1))
        assert {mode(path) for path in out.iterdir()} == {expected_file} and mode(out) == expected_dir


def test_saved_messages_are_private_and_not_overwritten_without_force(tmp_path):
    saver = MessageSaver.open(tmp_path / "saved")
    saver.save(a_message())
    saver.close()
    (saved,) = (tmp_path / "saved").iterdir()
    assert mode(saved) == 0o600 and mode(tmp_path / "saved") == 0o700
    with pytest.raises(TransportError, match="exists; pass --force to overwrite it"):
        MessageSaver.open(tmp_path / "saved").save(a_message())
    MessageSaver.open(tmp_path / "saved", overwrite=True).save(a_message())
    archive = MessageSaver.open(tmp_path / "run.tar")
    archive.save(a_message())
    archive.close()
    assert mode(tmp_path / "run.tar") == 0o600
    with pytest.raises(TransportError, match="run.tar exists; pass --force"):
        MessageSaver.open(tmp_path / "run.tar")


def test_a_bad_mode_setting_is_named(monkeypatch, tmp_path):
    from beamstream.modes import file_mode

    monkeypatch.setenv("BEAMSTREAM_FILE_MODE", "rw-r")
    with pytest.raises(ValueError, match="BEAMSTREAM_FILE_MODE='rw-r': expected an octal file mode"):
        file_mode()
