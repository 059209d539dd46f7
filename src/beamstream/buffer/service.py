"""``BufferService``: producers in on one endpoint, consumer groups out on another.

Producers (the ``stream`` sink, push pattern) connect their DEALER to the producer ROUTER;
consumers (``Client(endpoint, group=...)``) connect their DEALER to the consumer ROUTER.
One thread runs the loop: it reads producers only while the log has room (so producers block
on their HWM otherwise), hands messages to group members that have credit, takes
acknowledgements, and gives a departed member's unacknowledged messages to the rest of its
group. A departed member is found by probing: every ``probe_interval`` seconds the buffer
sends each member a tiny ``ping`` with ZMQ_ROUTER_MANDATORY, which fails at once for a
connection that is gone (ZMQ_ROUTER_NOTIFY would say so directly, but it is a draft API
that the released libzmq wheels do not build).

Memory bound: the log holds at most ``max_bytes`` of payload plus one message; ZeroMQ adds,
per connected producer, its receive queue of ``hwm`` messages and one being decoded. So resident
memory stays under ``max_bytes + (hwm + 2) × largest message`` beyond the process's own
(messages handed to consumers are those in the log, not copies). With
:func:`release_freed_buffers` (the CLI calls it) a message evicted from the log leaves memory
that the next received message reuses, instead of every message landing in fresh pages; RSS
then stays at the peak it reached, within this bound, until the buffer goes idle and gives the
freed memory back (:func:`trim_freed_buffers`).

Speed: the context has two I/O threads, the producer socket's connections on one and the
consumer socket's on the other, so receiving a message and sending the previous one (each a
copy between kernel and memory) run side by side.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import zmq

from beamstream.atomic import write_atomically
from beamstream.buffer.intake import ProducerIntake
from beamstream.buffer.segments import Segments
from beamstream.buffer.store import Group, Log
from beamstream.errors import WireFormatError
from beamstream.transport import open_socket
from beamstream.wire import EndMessage, parse_message
from beamstream.wire.control import Deliver, End, Error, Hello, Ping, Rejoin, ToBuffer, pack, unpack

log = logging.getLogger(__name__)
PING = pack(Ping())
REJOIN = pack(Rejoin())


class BufferService(ProducerIntake):
    """The buffer; call :meth:`serve` (blocks until ``stop`` is set) or use :meth:`start` for a thread."""

    def __init__(self, producers: str, consumers: str, *, max_bytes: int = 2 << 30, hwm: int = 4,
                 bind: bool = True, probe_interval: float = 0.5, spill: str | Path | None = None,
                 max_spill: int | None = None, retention_s: float | None = None,
                 producer_timeout_s: float = 60.0) -> None:
        # an I/O thread per side (affinity bits 1 and 2 name I/O threads 0 and 1; a bit with no
        # thread behind it would leave the socket unable to connect)
        super().__init__(zmq.Context(io_threads=2), producers, hwm=hwm, bind=bind,
                         producer_timeout_s=producer_timeout_s, affinity=0b01)
        self.consumers = open_socket(self.context, zmq.ROUTER, consumers, bind=bind, hwm=0,  # credit bounds it
                                     affinity=0b10)
        self.consumers.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.probe_interval = probe_interval
        self.next_probe = 0.0
        self.spill = Path(spill) if spill is not None else None
        self.ends = Segments.recover(self.spill / "ends") if self.spill else None
        # segments small enough that a full spill always has whole, deletable segments
        segment_bytes = 256 << 20 if max_spill is None else min(256 << 20, max(1 << 20, max_spill // 8))
        segments = Segments.recover(self.spill, segment_bytes) if self.spill else None
        self.log = Log(max_bytes, segments, max_spill, retention_s)
        self._saved_groups: dict[str, dict[str, Any]] = {}
        self._restore()
        self.members: dict[bytes, Group] = {}  # connected consumer → the group it joined
        self.last_size = 0
        self.counters.update(messages_out=0, bytes_out=0)
        self._moved_at_last_probe = self._moved_at_last_trim = 0

    # --- spill: state that survives a restart ---------------------------------------------------

    def _restore(self) -> None:
        """Rebuild the stream's account and the groups' positions from the spill directory."""
        if self.spill is None:
            return
        for _, _, frames in self.log.segments.records(first_frame_only=True):
            self.account(parse_message(frames, verify=False))
        for _, _, frames in self.ends.records():
            self.account(parse_message(frames, verify=False))
        saved = self.spill / "groups.json"
        for name, state in (json.loads(saved.read_text()) if saved.exists() else {}).items():
            offset = max(int(state["low_water"]), self.log.first_offset)
            self.log.groups[name] = Group(name=name, lossy=bool(state["lossy"]), next_offset=offset, low_water=offset)
        if self.log.next_offset:
            log.info("restored %d messages and %d groups from %s", self.log.next_offset - self.log.first_offset,
                     len(self.log.groups), self.spill)

    def save_groups(self) -> None:
        """Write every group's acknowledged position to ``groups.json`` in the spill directory, if one changed."""
        if self.spill is None:
            return
        state = {name: {"lossy": group.lossy, "low_water": group.low_water} for name, group in self.log.groups.items()}
        if state == self._saved_groups:
            return
        write_atomically(self.spill / "groups.json", json.dumps(state).encode())
        self._saved_groups = state

    # --- running ----------------------------------------------------------------------------

    def _release(self) -> None:
        self.save_groups()
        if self.spill is not None:  # seal the segments being written: the next start trusts their indexes
            self.log.segments.close()
            self.ends.close()
        self.consumers.close(linger=0)

    def serve(self, poll_ms: int = 100) -> None:
        """Run the loop until ``stop`` is set."""
        poller = zmq.Poller()
        poller.register(self.consumers, zmq.POLLIN)
        reading_producers = False
        while not self.stop.is_set():
            room = self.log.has_room(self.last_size)
            if room != reading_producers:
                (poller.register(self.producers, zmq.POLLIN) if room else poller.unregister(self.producers))
                reading_producers = room
            events = dict(poller.poll(poll_ms))
            if self.consumers in events:
                self._drain(self.consumers, self._on_consumer)
            if self.producers in events:
                self._drain(self.producers, self._on_producer, limit=16)
            self._dispatch()
            if time.monotonic() >= self.next_probe:
                self._probe()
                self.save_groups()
                self._trim_when_idle()

    def _trim_when_idle(self) -> None:
        """Give freed message memory back to the system once a probe interval passed with no message in or out."""
        moved = self.counters["messages_in"] + self.counters["messages_out"]
        if moved == self._moved_at_last_probe and moved != self._moved_at_last_trim:
            trim_freed_buffers()
            self._moved_at_last_trim = moved
        self._moved_at_last_probe = moved

    def _drain(self, socket: zmq.Socket, handle: Any, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)
            if socket is self.producers and not self.log.has_room(self.last_size):
                return

    # --- producers --------------------------------------------------------------------------

    def _on_producer(self, frames: list[zmq.Frame]) -> None:
        received = self.receive(frames)
        if received is None:
            return
        identity, message_frames, message = received
        if isinstance(message, EndMessage):
            if self.ends is not None:
                self.ends.append(len(self.ends.index), message_frames, "end")
        else:
            self.log.append(message_frames, message.nbytes, "data")
            self.last_size = message.nbytes
        self.acknowledge(identity, message)

    # --- consumers --------------------------------------------------------------------------

    def _on_consumer(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        try:
            if len(frames) != 2:
                raise WireFormatError(f"a control message is one frame, got {len(frames) - 1}")
            control = unpack(frames[1], ToBuffer)
        except WireFormatError as exc:
            log.warning("consumer %s: %s", identity.hex(), exc)
            self._send_consumer(identity, [pack(Error(reason=str(exc)))])
            return
        if isinstance(control, Hello):
            self._hello(identity, control)
        elif identity not in self.members:
            self._send_consumer(identity, [REJOIN])  # e.g. this buffer restarted
        else:
            group = self.members[identity]
            self.log.acknowledge(group, group.members[identity], control.offsets, control.credit)

    def _hello(self, identity: bytes, hello: Hello) -> None:
        if identity in self.members:
            return  # a repeated hello (the client could not tell whether we heard the first)
        group = self.log.group(hello.group, hello.lossy, hello.start)
        self.log.join(group, identity, hello.credit)
        self.members[identity] = group
        log.info("consumer %s joined group %s", identity.hex(), group.name)

    def _forget(self, identity: bytes) -> None:
        group = self.members.pop(identity, None)
        if group is not None:
            returned = self.log.leave(group, identity)
            log.info("consumer %s left group %s; %d messages go to the others", identity.hex(), group.name, returned)

    def _send_consumer(self, identity: bytes, frames: list[Any]) -> bool:
        """Send, or forget the consumer if its connection is gone (ROUTER_MANDATORY says so at once)."""
        try:
            self.consumers.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._forget(identity)
            return False

    def _probe(self) -> None:
        self.next_probe = time.monotonic() + self.probe_interval
        for identity in list(self.members):
            self._send_consumer(identity, [PING])

    def _dispatch(self) -> None:
        for group, member, entry in list(self.log.dispatch()):
            control = pack(Deliver(offset=entry.offset, skipped=group.skipped))
            if self._send_consumer(member.identity, [control, *entry.frames]):
                self.counters["messages_out"] += 1
                self.counters["bytes_out"] += entry.nbytes
        if self.producers_done():
            self._send_ends()

    def _send_ends(self) -> None:
        verdict = None
        for group in self.log.groups.values():
            if group.next_offset < self.log.next_offset or group.redeliver or group.outstanding():
                continue
            for identity in list(group.members):
                if identity not in group.end_sent:
                    group.end_sent.add(identity)
                    verdict = verdict or self.report.final_verdict()
                    end = End(complete=verdict.complete, summary=verdict.summary, skipped=group.skipped,
                              missing=verdict.missing)
                    self._send_consumer(identity, [pack(end)])


@functools.cache
def _libc() -> Any:
    """glibc, or None where it is not the C library (then the allocator is left alone); looked up once."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (AttributeError where the C library is not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_buffers(threshold: int = 32 << 20) -> bool:
    """Make glibc reuse freed message buffers while the buffer is busy; :func:`trim_freed_buffers` gives them back.

    A received message is written by the kernel into memory that libzmq allocates. Memory the
    process never touched costs a page fault and a page of zeroes per 4 KiB, which measured
    as half of the buffer's CPU time with 8 MiB messages when every message got fresh memory
    (mmap per allocation). So messages up to ``threshold`` bytes (glibc's limit: 32 MiB) come
    from the heap, and the heap is not shrunk on every free: a message evicted from the log
    leaves memory the next one reuses. Resident memory then stays at the peak the log and the
    ZeroMQ queues reached (bounded as the module docstring says) until the buffer goes idle and
    :meth:`BufferService.serve` calls :func:`trim_freed_buffers`.
    Returns False where glibc's ``mallopt`` is not available (nothing changes).
    """
    libc = _libc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))


def trim_freed_buffers() -> bool:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``).

    True if some was given back; False if there was none, or where glibc is not the C library.
    """
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
