"""Payloads through shared memory (shm:// endpoints): the arena's ring, hostile references, and real streams —
every event once and bit-exact, sealed streams refused without their key, slots freed when a consumer is killed,
and no stale arena after a producer is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from beamstream.client import Client
from beamstream.errors import OptionError, SealRefused, StreamIncomplete, TransportError, WireFormatError
from beamstream.producer import run_local
from beamstream.security.streamkey import StreamKey
from beamstream.shared_memory import SHM_DIR, Arena, ArenaFull, ArenaMaps, remove_stale
from beamstream.spec import parse_spec
from beamstream.wire.replies import kept, parse_reply, released
from beamstream.wire.slots import ALIGN, SlotRef, encode_ref, parse_ref

MiB = 1 << 20


def image_spec(endpoint: str, n_events: int = 40, shape=(256, 512), shm_bytes: int = 4 * MiB, **source) -> object:
    return parse_spec({
        "source": {"type": "simulated", "n_events": n_events, "events_per_read": 1, "bank_size": 5, **source,
                   "detectors": [{"kind": "image", "shape": list(shape), "dtype": "uint16"}]},
        "sinks": [{"type": "stream", "endpoint": endpoint, "shm_bytes": shm_bytes}],
    })


def read_all(endpoint: str, spec, workers: int = 1, **options) -> tuple[dict[int, np.ndarray], Client]:
    """Every event's image (copied) by seq, read at ``endpoint`` (bound) while ``spec`` runs."""
    outcome: dict = {}
    images: dict[int, np.ndarray] = {}
    with Client(endpoint, bind=True, timeout=60, **options) as client:
        producers = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec, workers=workers)))
        producers.start()
        try:
            for event in client.events():
                assert event.seq not in images
                images[event.seq] = np.array(event.data["image"])
        finally:
            producers.join()
    assert outcome["result"].ok, outcome["result"].errors
    return images, client


# --- the arena ------------------------------------------------------------------------------


def test_arena_ring_reuses_released_slots_in_order(tmp_path):
    arena = Arena(MiB, directory=tmp_path)
    try:
        maps = ArenaMaps(tmp_path)
        frame = bytes(range(256)) * 1024  # 256 KiB
        refs = [arena.put([frame]) for _ in range(3)]
        with pytest.raises(ArenaFull):
            arena.put([frame, frame])  # 512 KiB: three slots of 256 KiB + headers leave less
        assert arena.held() == 3
        assert arena.release(refs[1].generation)  # out of order: the space comes back with the oldest
        assert not arena.release(refs[1].generation)  # twice: no
        with pytest.raises(ArenaFull):
            arena.put([frame, frame])
        assert arena.release(refs[0].generation)
        wrapped = arena.put([frame, b"x" * 100, np.empty((0, 16))])  # reclaimed from the start of the ring
        assert wrapped.offset == 0 and arena.held() == 2
        frames = maps.frames(wrapped)
        assert bytes(frames[0]) == frame and bytes(frames[1]) == b"x" * 100 and bytes(frames[2]) == b""
        assert frames[0].readonly and all(int(np.frombuffer(f, np.uint8).ctypes.data) % ALIGN == 0 for f in frames)
        with pytest.raises(WireFormatError, match="reused"):
            maps.frames(refs[0])  # its space now holds another slot
        maps.close()
    finally:
        arena.close()
    assert not (tmp_path / arena.name).exists()


def test_a_message_larger_than_the_arena_names_the_setting(tmp_path):
    arena = Arena(MiB, directory=tmp_path)
    try:
        with pytest.raises(TransportError, match="shm_bytes"):
            arena.put([bytes(2 * MiB)])
    finally:
        arena.close()


def test_hostile_references_are_refused(tmp_path):
    arena = Arena(MiB, directory=tmp_path)
    try:
        maps = ArenaMaps(tmp_path)
        ref = arena.put([b"payload"])
        for frame in (b"\xc1", encode_ref(ref)[:-1], b"\x94\xa3abc\x01\x00\x90"):
            with pytest.raises(WireFormatError):
                parse_ref(frame)
        with pytest.raises(WireFormatError):  # a name outside the arena pattern: never opened as a path
            parse_ref(encode_ref(SlotRef(arena="../../etc/passwd", generation=1, offset=0, sizes=[1])))
        beyond = SlotRef(arena=ref.arena, generation=ref.generation, offset=ref.offset, sizes=[2 * MiB])
        with pytest.raises(WireFormatError, match="beyond"):
            maps.frames(beyond)
        missing = SlotRef(arena="beamstream-shm-1-0123456789abcdef", generation=1, offset=0, sizes=[1])
        with pytest.raises(WireFormatError, match="cannot open"):
            maps.frames(missing)
        assert bytes(maps.frames(ref)[0]) == b"payload"
        maps.close()
    finally:
        arena.close()


def test_released_and_kept_with_a_session_round_trip():
    assert parse_reply(released(12345)) == ("released", 12345, "", "")
    assert parse_reply(kept(7, "0123456789abcdef")) == ("kept", 7, "", "0123456789abcdef")
    for frame in (b"beamstream-released x", b"beamstream-released 1 0123456789abcdef", b"beamstream-kept 1 xyz",
                  b"beamstream-kept 1 0123456789ABCDEF"):
        with pytest.raises(WireFormatError, match="malformed"):
            parse_reply(frame)


def test_stale_arenas_of_dead_producers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"beamstream-shm-{dead.pid}-0123456789abcdef"
    alive = tmp_path / f"beamstream-shm-{os.getppid()}-0123456789abcdef"
    stale.write_bytes(b"x")
    alive.write_bytes(b"x")
    assert remove_stale(tmp_path) == [stale]
    assert alive.exists() and not stale.exists()


# --- streams ---------------------------------------------------------------------------------


def test_every_event_once_and_bit_exact_against_ipc(tmp_path):
    shm, ipc = read_all(f"shm://{tmp_path}/s", image_spec(f"shm://{tmp_path}/s"), workers=2)[0], \
        read_all(f"ipc://{tmp_path}/i", image_spec(f"ipc://{tmp_path}/i"), workers=2)[0]
    assert sorted(shm) == list(range(40))
    for seq, image in ipc.items():
        np.testing.assert_array_equal(shm[seq], image)
    assert not [path for path in SHM_DIR.glob("beamstream-shm-*") if not _alive(int(path.name.split("-")[2]))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_views_are_read_only_until_the_next_message_and_copies_stay(tmp_path):
    endpoint = f"shm://{tmp_path}/s"
    spec = image_spec(endpoint, n_events=30, shm_bytes=MiB)  # 256 KiB images: four slots, reused over and over
    expected = read_all(f"ipc://{tmp_path}/i", image_spec(f"ipc://{tmp_path}/i", n_events=30))[0]
    outcome: dict = {}
    with Client(endpoint, bind=True, timeout=60, copy=True) as client:
        producers = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec)))
        producers.start()
        kept = [message for message in client.messages()]  # held while the producer reuses the slots
        producers.join()
    assert outcome["result"].ok and client.report.complete
    for message in kept:
        np.testing.assert_array_equal(message.arrays["image"][0], expected[int(message.seq[0])])
    with Client(endpoint, bind=True, timeout=60) as client:
        producers = threading.Thread(target=lambda: run_local(spec))
        producers.start()
        for message in client.messages():
            image = message.arrays["image"]
            assert not image.flags.writeable
            with pytest.raises(ValueError):
                image[0, 0, 0] = 1
            np.testing.assert_array_equal(image[0], expected[int(message.seq[0])])
        producers.join()


def test_a_sealed_stream_is_refused_without_its_key(tmp_path):
    key = StreamKey.generate()
    endpoint = f"shm://{tmp_path}/s"
    spec = image_spec(endpoint, n_events=10)
    outcome: dict = {}
    with Client(endpoint, bind=True, timeout=30) as client:
        producers = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec, key=key)))
        producers.start()
        with pytest.raises(SealRefused):
            list(client.messages())
    producers.join()
    assert not outcome["result"].ok  # refused, the producer says so
    with Client(endpoint, bind=True, timeout=30, key=key) as client:
        producers = threading.Thread(target=lambda: outcome.update(result=run_local(spec, key=key)))
        producers.start()
        events = [event.seq for event in client.events()]
        producers.join()
    assert sorted(events) == list(range(10)) and client.report.complete and outcome["result"].ok


def test_copy_and_pub_are_refused_where_they_do_not_apply(tmp_path):
    with pytest.raises(OptionError, match="copy applies only to shm:// streams"):
        Client(f"ipc://{tmp_path}/s", group="g", copy=True)
    with pytest.raises(Exception, match="push"):
        parse_spec({"source": {"type": "simulated", "n_events": 1},
                    "sinks": [{"type": "stream", "endpoint": f"shm://{tmp_path}/s", "pattern": "pub",
                               "bind": True}]})


CONSUMER = """
import os, signal, sys
from beamstream.client import Client
with Client(sys.argv[1], bind=True, timeout=60) as client:
    messages = client.messages()
    held = [next(messages) for _ in range(int(sys.argv[2]))]  # views of slots never released
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_slots_a_killed_consumer_held_come_back(tmp_path):
    """A consumer killed with kill -9 while it holds most of a small arena: the producer takes its slots back,
    goes on with the next consumer, and ends; what the dead one had is missing, nothing else."""
    endpoint = f"shm://{tmp_path}/s"
    spec = image_spec(endpoint, n_events=40, shm_bytes=MiB, rate_hz=200.0)  # four slots
    first = subprocess.Popen([sys.executable, "-c", CONSUMER, endpoint, "3"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    outcome: dict = {}
    producers = threading.Thread(target=lambda: outcome.setdefault("result", run_local(spec)))
    producers.start()
    try:
        assert first.stdout.readline() == "holding\n"
        assert first.wait(timeout=30) == -signal.SIGKILL
        first.stdout.close()
        with Client(endpoint, bind=True, timeout=60) as client, pytest.raises(StreamIncomplete) as failed:
            list(client.events())
    finally:
        producers.join(timeout=120)
    assert outcome["result"].ok, outcome["result"].errors
    report = failed.value.report
    assert report.all_ended  # (a message sent on the new connection just before the resend arrives twice: counted)
    assert report.missing_events <= 3  # at most the three it read (its kept replies may die with it: then resent)


# --- through a buffer --------------------------------------------------------------------------


def read_group(endpoint: str, group: str, results: dict, key=None, name: str | None = None,
               **options) -> threading.Thread:
    """Read ``group`` of the buffer at ``endpoint`` on a thread: ``results[name]`` (``name`` defaults to the group)
    gets {seq: image copy}, or the exception raised; ``results[name + ".report"]`` the report."""
    name = name or group

    def read() -> None:
        images: dict[int, np.ndarray] = {}
        try:
            with Client(endpoint, group=group, timeout=60, key=key, **options) as client:
                for event in client.events():
                    images[event.seq] = np.array(event.data["image"])
                results[name + ".report"] = client.report
            results[name] = images
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            results[name] = exc

    thread = threading.Thread(target=read)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """The 40 images of :func:`image_spec` as read over ipc://, by seq."""
    folder = tmp_path_factory.mktemp("expected")
    return read_all(f"ipc://{folder}/i", image_spec(f"ipc://{folder}/i"))[0]


@pytest.mark.parametrize("out", ["shm", "ipc"])
def test_a_buffer_passes_slots_to_two_groups(tmp_path, expected, out):
    """Producers write into shared memory; the buffer keeps views and hands members references (shm://) or the
    payload (ipc://); two groups each get every event once, bit-exact, and the producers' arenas come back."""
    from beamstream.buffer.local import LocalBuffer

    buffer = LocalBuffer(f"shm://{tmp_path}/in", f"{out}://{tmp_path}/out", max_bytes=64 * MiB).start()
    try:
        results: dict = {}
        readers = [read_group(f"{out}://{tmp_path}/out", name, results) for name in ("a", "b")]
        outcome = run_local(image_spec(f"shm://{tmp_path}/in", shm_bytes=MiB), workers=2)  # four slots each
        for reader in readers:
            reader.join(timeout=120)
    finally:
        buffer.close()
    assert outcome.ok, outcome.errors
    for name in ("a", "b"):
        assert sorted(results[name]) == list(range(40)) and results[name + ".report"].complete
        for seq, image in expected.items():
            np.testing.assert_array_equal(results[name][seq], image)
    assert not [path for path in SHM_DIR.glob("beamstream-shm-*") if not _alive(int(path.name.split("-")[2]))]


def test_a_group_that_joins_later_reads_the_spill_through_the_buffers_own_slots(tmp_path, expected):
    from beamstream.buffer.local import LocalBuffer

    buffer = LocalBuffer(f"shm://{tmp_path}/in", f"shm://{tmp_path}/out", spill=tmp_path / "spill",
                         shm_bytes=MiB).start()  # the buffer's own arena: four slots for two members
    try:
        outcome = run_local(image_spec(f"shm://{tmp_path}/in", shm_bytes=MiB), workers=1)
        assert outcome.ok, outcome.errors  # no group yet: the spill has every message, the producer's arena is free
        results: dict = {}
        readers = [read_group(f"shm://{tmp_path}/out", "late", results, name=f"member{n}") for n in range(2)]
        for reader in readers:
            reader.join(timeout=120)
    finally:
        buffer.close()
    got = [results[f"member{n}"] for n in range(2)]
    assert not any(isinstance(images, Exception) for images in got), got
    assert sorted([*got[0], *got[1]]) == list(range(40))
    for seq, image in expected.items():
        np.testing.assert_array_equal({**got[0], **got[1]}[seq], image)
    assert buffer.lender.lent == {} and buffer.lender.arena.held() == 0


def test_a_group_made_after_the_buffer_let_go_of_the_first_messages_ends_incomplete(tmp_path):
    """Without a spill directory a buffer keeps shared-memory messages no group needs within half the producer's
    arena; a group made after the stream ran gets the ones left and an end that says what it never got."""
    from beamstream.buffer.local import LocalBuffer

    buffer = LocalBuffer(f"shm://{tmp_path}/in", f"shm://{tmp_path}/out", max_bytes=64 * MiB).start()
    try:
        outcome = run_local(image_spec(f"shm://{tmp_path}/in", shm_bytes=MiB), workers=1)  # four 256 KiB slots
        assert outcome.ok, outcome.errors
        results: dict = {}
        read_group(f"shm://{tmp_path}/out", "late", results).join(timeout=120)
    finally:
        buffer.close()
    assert isinstance(results["late"], StreamIncomplete), results["late"]
    report = results["late"].report
    assert 0 < report.events < 40 and report.skipped == 40 - report.events, (report.events, report.skipped)
    assert f"group 'late' never got the stream's first {report.skipped} messages" in str(results["late"])
    assert "spill directory" in str(results["late"])

CONSUMER_IN_GROUP = """
import os, signal, sys
from beamstream.client import Client
with Client(sys.argv[1], group="g", timeout=60) as client:
    messages = client.messages()
    held = [next(messages) for _ in range(3)]
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_member_killed_holding_slots_loses_nothing(tmp_path, expected):
    """kill -9 a member of a lossless group while it holds slots: the other member gets what it had not
    acknowledged, the slots come back, and the producer (four slots) ends."""
    from beamstream.buffer.local import LocalBuffer

    buffer = LocalBuffer(f"shm://{tmp_path}/in", f"shm://{tmp_path}/out").start()
    try:
        victim = subprocess.Popen([sys.executable, "-c", CONSUMER_IN_GROUP, f"shm://{tmp_path}/out"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        outcome: dict = {}
        producers = threading.Thread(target=lambda: outcome.setdefault("result", run_local(
            image_spec(f"shm://{tmp_path}/in", shm_bytes=MiB, rate_hz=100.0))))
        producers.start()
        assert victim.stdout.readline() == "holding\n"
        assert victim.wait(timeout=30) == -signal.SIGKILL
        victim.stdout.close()
        results: dict = {}
        read_group(f"shm://{tmp_path}/out", "g", results).join(timeout=120)
        producers.join(timeout=120)
    finally:
        buffer.close()
    assert outcome["result"].ok, outcome["result"].errors
    survivor = results["g"]
    assert not isinstance(survivor, Exception), survivor
    assert set(range(40)) - set(survivor) <= {0, 1}  # the victim acknowledged at most its first two
    assert results["g.report"].complete


def test_a_member_without_the_key_is_refused_by_a_buffer_over_shared_memory(tmp_path):
    from beamstream.buffer.local import LocalBuffer

    key = StreamKey.generate()
    buffer = LocalBuffer(f"shm://{tmp_path}/in", f"shm://{tmp_path}/out", admission=key.admission).start()
    try:
        results: dict = {}
        stranger = read_group(f"shm://{tmp_path}/out", "stranger", results)
        member = read_group(f"shm://{tmp_path}/out", "member", results, key=key)
        outcome = run_local(image_spec(f"shm://{tmp_path}/in", n_events=10), key=key)
        stranger.join(timeout=60)
        member.join(timeout=60)
    finally:
        buffer.close()
    assert outcome.ok, outcome.errors
    assert isinstance(results["stranger"], TransportError) and "refused" in str(results["stranger"])
    assert sorted(results["member"]) == list(range(10))


def test_the_viewer_keeps_each_newest_event_intact_while_its_slot_is_written_again(tmp_path, expected):
    """The viewer's reader keeps the newest event while it reads on (the page takes it later): over shm:// it reads
    copies, so each event a page took is still that event's image after its slot went back to the producer."""
    from beamstream.buffer.local import LocalBuffer
    from beamstream.viewer.watch import Watches

    buffer = LocalBuffer(f"shm://{tmp_path}/in", f"shm://{tmp_path}/out", max_bytes=64 * MiB).start()
    taken: list = []
    outcome: dict = {}
    try:
        latest = Watches().latest("s", f"shm://{tmp_path}/out", None)
        producers = threading.Thread(target=lambda: outcome.setdefault("result", run_local(
            image_spec(f"shm://{tmp_path}/in", shm_bytes=MiB, rate_hz=200.0))))  # four slots, reused ten times
        producers.start()
        version = 0
        while producers.is_alive() or latest.status()["state"] == "live":
            data, status = latest.newer(version, 0.5)
            if data is not None:
                taken.append((status["seq"], data["image"]))
                version = status["version"]
            if status["state"] in ("complete", "incomplete", "ended"):
                break
        producers.join(timeout=60)
    finally:
        buffer.close()
    assert outcome["result"].ok, outcome["result"].errors
    assert len(taken) > 5, "the page took several events while the stream ran"
    for seq, image in taken:
        np.testing.assert_array_equal(image, expected[seq])


def test_the_log_keeps_leases_within_half_an_arena_and_never_what_a_group_needs():
    from beamstream.buffer.base import Lease
    from beamstream.buffer.message_log import MessageLog

    released: list[int] = []
    log = MessageLog(max_bytes=1 << 30, released=lambda entry: released.append(entry.lease.generation))

    def lease(generation: int) -> Lease:
        return Lease(b"p", generation, b"", "arena", 100, budget=300)

    group = log.group("g", lossy=False, start="earliest")
    member = log.join(group, b"m", credit=10)
    for generation in range(1, 6):
        log.append([b"h", b"x" * 100], 100, "data", lease(generation))
        log.make_room(0)
    assert released == []  # 500 bytes over a budget of 300, but the group needs all of them
    list(log.dispatch())
    log.acknowledge(group, member, [0, 1, 3], credit=0)
    log.make_room(0)
    assert released == [1, 2]  # the oldest it acknowledged, down to the budget; 4 waits for 3 (not acknowledged)
    assert log.first_offset == 2 and log.leased["arena"] == 300
    assert log.group("late", lossy=False, start="earliest").skipped == 2, "made after the log let go of two"
    assert log.group("live", lossy=False, start="now").skipped == 0, "a group from now misses nothing of its own"
    restored = log.restore_group("back", lossy=False, low_water=1)  # a spill's record: it had acknowledged one
    assert (restored.next_offset, restored.low_water, restored.skipped) == (2, 2, 1)
