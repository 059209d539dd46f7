"""``LocalBuffer``: producers in on one endpoint, consumer groups out on another, served by this process.

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
:func:`~beamstream.allocator.release_freed_buffers` (:func:`~beamstream.buffer.run.run_buffer` calls it) a message evicted from the log leaves memory
that the next received message reuses, instead of every message landing in fresh pages; RSS
then stays at the peak it reached, within this bound, until the buffer goes idle and gives the
freed memory back (:func:`~beamstream.allocator.trim_freed_buffers`).

Admission: given its stream's ``admission`` key, the buffer takes only producer messages sealed with it
(:class:`~beamstream.buffer.base.Buffer`) and admits a consumer only on a hello that proves it holds the key
(:class:`~beamstream.buffer.admission.HelloCheck`); a refused consumer is told why in an ``error`` and sent
nothing else, joins no group, and its acks are not taken (it is no member). With a spill directory the hellos
it admitted are recorded there (``ADMITTED_HELLOS_FILE``) before it admits them, so none is admitted again after
a restart. Without an admission key anyone who reaches the consumer endpoint may make a group: a group made
on this run that has acknowledged nothing since it was made holds a full buffer's producers back for at most
``NEW_GROUP_STALL_S`` (or ``group_stall_s`` if shorter), every other lossless group for ``group_stall_s``.

Shared memory: with an ``shm://`` producer endpoint the log holds views of the producers' slots (released to them
as :class:`~beamstream.buffer.message_log.MessageLog` says); with an ``shm://`` consumer endpoint members get slot
references instead of payloads (:class:`~beamstream.buffer.lending.SlotLender`, whose own arena is ``shm_bytes``).
A member's views of a slot stay valid until it acknowledges the message (asks for the next one).

Speed: a received message is handed to every group from the same memory (its zmq.Frames, sent with copy=False,
are reference-counted, not copied); what each group costs on ipc:// and tcp:// is ZeroMQ's copy of the message into
the kernel, which no sender avoids (a send to two sockets is two writes). The producer socket's connections have an
I/O thread of their own, and the consumer socket's are spread over :func:`consumer_io_threads` others (ZeroMQ gives
each new connection the least loaded; connections that arrive at the same moment may share one), so receiving a
message and sending the previous one run side by side, and each group's copy runs on a thread of its own rather
than after the other groups' (benchmarks/README.md, "Where the buffer's time goes").
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
from prometheus_client.core import Metric

from beamstream.allocator import trim_freed_buffers
from beamstream.atomic import write_atomically
from beamstream.buffer.admission import HelloCheck
from beamstream.buffer.base import Buffer
from beamstream.buffer.metrics import group_metrics, log_metrics
from beamstream.buffer.segments import Segments
from beamstream.buffer.message_log import Group, MessageLog
from beamstream.errors import WireFormatError
from beamstream.buffer.lending import SlotLender
from beamstream.shared_memory import DEFAULT_ARENA_BYTES
from beamstream.transport import DEFAULT_MAX_MESSAGE, bound_address, open_socket, shared
from beamstream.wire import EndMessage, parse_message
from beamstream.wire.control import (Deliver, Describe, End, Error, Hello, Ping, Rejoin, ToBuffer, Verdict, pack,
                                      unpack)
from beamstream.wire.metadata import RunMetadata

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

logger = logging.getLogger(__name__)
MAX_CONTROL_BYTES = 1 << 20  # a consumer's control message is small: a larger one drops its connection
STOP_NOTICE_LINGER_MS = 1000  # at most this long to get "the buffer stopped" to members when it closes
METADATA_FILE = "metadata.msgpack"  # the stream's description, in the spill directory
ADMITTED_HELLOS_FILE = "admitted-hellos.msgpack"  # the admitted hellos' nonces (with an admission key), in the spill
NEW_GROUP_STALL_S = 10.0  # without an admission key: how long a new group that reads nothing may hold producers back
PING = pack(Ping())
REJOIN = pack(Rejoin())
MAX_CONSUMER_IO_THREADS = 8  # the most I/O threads sending to consumers


def consumer_io_threads() -> int:
    """How many I/O threads send to consumers: one per CPU this process may use but one (the loop's), at least 2
    (so two groups' copies run side by side) and at most :data:`MAX_CONSUMER_IO_THREADS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, min(MAX_CONSUMER_IO_THREADS, cpus - 1))


class LocalBuffer(Buffer):
    """The buffer that serves consumer groups itself; run and stop it as every :class:`Buffer`."""

    def __init__(self, producer_endpoint: str, consumer_endpoint: str, *, max_bytes: int = 2 << 30, hwm: int = 4,
                 bind: bool = True, probe_interval: float = 0.5, spill: str | Path | None = None,
                 max_spill: int | None = None, retention_s: float | None = None,
                 producer_timeout_s: float = 60.0, max_message: int = DEFAULT_MAX_MESSAGE,
                 group_stall_s: float = 60.0, max_consumers: int = 1024, max_connections: int = 4096,
                 admission: AdmissionKey | None = None, shm_bytes: int = DEFAULT_ARENA_BYTES) -> None:
        # I/O thread 0 for the producers' connections, threads 1 to n for the consumers' (affinity bit k names
        # thread k; a bit with no thread behind it would leave the socket unable to connect)
        consumer_threads = consumer_io_threads()
        super().__init__(zmq.Context(io_threads=1 + consumer_threads), producer_endpoint, hwm=hwm, bind=bind,
                         producer_timeout_s=producer_timeout_s, max_message=max_message,
                         max_connections=max_connections, affinity=0b1, admission=admission)
        self.consumer_socket = open_socket(self.context, zmq.ROUTER, consumer_endpoint, bind=bind, hwm=0,  # credit bounds it
                                           affinity=((1 << consumer_threads) - 1) << 1, max_message=MAX_CONTROL_BYTES)
        if bind:
            self.limit_connections(self.consumer_socket, "consumer")
        self.consumer_socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.consumer_endpoint = consumer_endpoint
        self.lender = SlotLender(shm_bytes) if shared(consumer_endpoint) else None
        self.probe_interval = probe_interval
        self.group_stall_s = group_stall_s
        self.new_group_stall_s = min(group_stall_s, NEW_GROUP_STALL_S)
        self.made_at: dict[str, int] = {}  # group made by a hello on this run → its low_water then
        self.max_consumers = max_consumers
        self.next_probe = 0.0
        self.spill = Path(spill) if spill is not None else None
        self.ends = Segments.recover(self.spill / "ends") if self.spill else None
        # segments small enough that a full spill always has whole, deletable segments
        segment_bytes = 256 << 20 if max_spill is None else min(256 << 20, max(1 << 20, max_spill // 8))
        segments = Segments.recover(self.spill, segment_bytes) if self.spill else None
        self.message_log = MessageLog(max_bytes, segments, max_spill, retention_s,
                                      released=lambda entry: self.release(entry.lease))
        record = self.spill / ADMITTED_HELLOS_FILE if self.spill else None
        self.hello_check = HelloCheck(admission, record=record) if admission is not None else None
        self._saved_groups: dict[str, dict[str, Any]] = {}
        self.members: dict[bytes, Group] = {}  # connected consumer → the group it joined
        self._restore()
        self.last_size = 0
        self.counters.update(messages_out=0, bytes_out=0, groups_dropped=0, control_rejected=0, consumers_refused=0)
        self._moved_at_last_probe = self._moved_at_last_trim = 0

    @property
    def consumer_address(self) -> str:
        return bound_address(self.consumer_socket)

    def backend_metrics(self) -> Iterator[Metric]:
        yield from log_metrics(self.message_log)
        yield from group_metrics(list(self.message_log.groups.values()), self.message_log.next_offset)

    # --- spill: state that survives a restart ---------------------------------------------------

    def _restore(self) -> None:
        """Rebuild the stream's account and the groups' positions from the spill directory."""
        if self.spill is None:
            return
        saved_metadata = self.spill / METADATA_FILE
        if saved_metadata.exists():
            self.metadata = msgspec.msgpack.decode(saved_metadata.read_bytes(), type=RunMetadata)
        for _, _, frames in self.message_log.segments.records(first_frame_only=True):
            self.account(parse_message(frames, verify=False))
        for _, _, frames in self.ends.records():  # the header alone: a sealed end has its seal frame after it
            self.account(parse_message(frames[:1], verify=False))
        saved = self.spill / "groups.json"
        for name, state in (json.loads(saved.read_text()) if saved.exists() else {}).items():
            self.message_log.restore_group(name, bool(state["lossy"]), int(state["low_water"]))
        if self.message_log.next_offset:
            logger.info("restored %d messages and %d groups from %s", self.message_log.next_offset - self.message_log.first_offset,
                     len(self.message_log.groups), self.spill)

    def described(self) -> None:
        """Keep the description beside the spill (the message that carried it may be evicted) and send it
        to every member."""
        if self.spill is not None:
            write_atomically(self.spill / METADATA_FILE, msgspec.msgpack.encode(self.metadata))
        for identity in list(self.members):
            self._describe(identity)

    def _describe(self, identity: bytes) -> None:
        self._send_consumer(identity, [pack(Describe(metadata=self.metadata))])

    def save_groups(self) -> None:
        """Write every group's acknowledged position to ``groups.json`` in the spill directory, if one changed."""
        if self.spill is None:
            return
        state = {name: {"lossy": group.lossy, "low_water": group.low_water} for name, group in self.message_log.groups.items()}
        if state == self._saved_groups:
            return
        write_atomically(self.spill / "groups.json", json.dumps(state).encode())
        self._saved_groups = state

    # --- running ----------------------------------------------------------------------------

    def _release(self) -> None:
        self.save_groups()
        if self.spill is not None:  # seal the segments being written: the next start trusts their indexes
            self.message_log.segments.close()
            self.ends.close()
        told = self.spill is None and self._tell_members_it_stopped()
        self.consumer_socket.close(linger=STOP_NOTICE_LINGER_MS if told else 0)
        if self.lender is not None:
            self.lender.close()

    def _tell_members_it_stopped(self) -> bool:
        """A buffer without a spill that stops before it sent a member the stream's end tells that member so
        (an Error): nothing can resume the stream, and the member need not wait for its timeout to learn it.
        True if it told any."""
        reason = ("the buffer stopped before the stream ended (cancelled or shut down; it kept no spill to resume "
                  "from): nothing more will come")
        told = False
        for group in self.message_log.groups.values():
            for identity in list(group.members):
                if identity not in group.end_sent:
                    told = self._send_consumer(identity, [pack(Error(reason=reason))]) or told
        return told

    def _serve(self, poll_ms: int = 100) -> None:
        poller = zmq.Poller()
        poller.register(self.consumer_socket, zmq.POLLIN)
        reading_producers = False
        while not self.stopping:
            room = self.message_log.make_room(self.last_size)
            if not room and self._drop_stalled_groups():
                room = self.message_log.make_room(self.last_size)
            if room != reading_producers:
                (poller.register(self.producer_socket, zmq.POLLIN) if room else poller.unregister(self.producer_socket))
                reading_producers = room
            events = dict(poller.poll(poll_ms))
            if self.consumer_socket in events:
                self._drain(self.consumer_socket, self._on_consumer)
            if self.producer_socket in events:
                self._drain(self.producer_socket, self._on_producer, limit=16)
            self._dispatch()
            if time.monotonic() >= self.next_probe:
                self._probe()
                self.save_groups()
                self._trim_when_idle()

    def _drop_stalled_groups(self) -> bool:
        """Drop the lossless groups that keep producers waiting without acknowledging anything for
        ``group_stall_s`` (a new group on a buffer without an admission key: ``new_group_stall_s``, see
        :meth:`_stalled_groups`); their members are told why. True if any was dropped."""
        stalled = self._stalled_groups()
        for group, why in stalled:
            reason = (f"group {group.name} was dropped: it acknowledged nothing for {why} "
                      "while the buffer was full and producers waited for it")
            logger.warning("%s (%d members)", reason, len(group.members))
            for identity in list(group.members):
                self.members.pop(identity, None)
                self._send_consumer(identity, [pack(Error(reason=reason))])
            self.message_log.drop_group(group)
            self.made_at.pop(group.name, None)
            self.counters["groups_dropped"] += 1
        return bool(stalled)

    def _stalled_groups(self) -> list[tuple[Group, str]]:
        """(group, for how long, in words) of each lossless group that has kept producers waiting too long:
        ``group_stall_s`` without acknowledging anything; or, on a buffer without an admission key (anyone may
        make a group there), ``new_group_stall_s`` for a group made on this run that has acknowledged nothing
        since it was made (a stranger's group that reads nothing holds the stream back no longer)."""
        stalled = {group.name: (group, f"{self.group_stall_s:g} s")
                   for group in self.message_log.stalled_groups(self.group_stall_s)}
        if self.hello_check is None:
            for group in self.message_log.stalled_groups(self.new_group_stall_s):
                if self.made_at.get(group.name) == group.low_water:
                    stalled.setdefault(group.name, (group, f"{self.new_group_stall_s:g} s since it joined"))
        return list(stalled.values())

    def activity(self) -> tuple[int, int]:
        moved, _ = super().activity()
        return moved, len(self.members)

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
            if socket is self.producer_socket and not self.message_log.make_room(self.last_size):
                return

    # --- producers --------------------------------------------------------------------------

    def _on_producer(self, frames: list[zmq.Frame]) -> None:
        received = self.receive(frames)
        if received is None:
            return
        identity, message_frames, message, lease = received
        if isinstance(message, EndMessage):
            if self.ends is not None:
                self.ends.append(len(self.ends.index), message_frames, "end")
        else:
            self.message_log.append(message_frames, message.nbytes, "data", lease)
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
            self.counters["control_rejected"] += 1
            self.warn_once(str(exc), "refused a control message from consumer %s: %s", identity.hex(), exc)
            self._send_consumer(identity, [pack(Error(reason=str(exc)))])
            return
        if isinstance(control, Hello):
            self._hello(identity, control)
        elif identity not in self.members:
            self._send_consumer(identity, [REJOIN])  # e.g. this buffer restarted
        else:
            group = self.members[identity]
            self.message_log.acknowledge(group, group.members[identity], control.offsets, control.credit)
            for offset in control.offsets if self.lender is not None else ():
                self.lender.take_back(identity, offset)

    def _hello(self, identity: bytes, hello: Hello) -> None:
        if identity in self.members:
            return  # a repeated hello (the client could not tell whether we heard the first)
        if self.hello_check is not None and (refusal := self.hello_check.refusal(hello)) is not None:
            kind, reason = refusal
            self.counters["consumers_refused"] += 1
            self.warn_once(f"consumer hello: {kind}", "refused consumer %s: %s", identity.hex(), reason)
            self._send_consumer(identity, [pack(Error(reason=reason))])
            return
        if len(self.members) >= self.max_consumers:
            self.counters["control_rejected"] += 1
            reason = (f"this buffer serves {self.max_consumers} consumers already; "
                      "start another buffer or raise --max-consumers")
            logger.warning("refused consumer %s: %s", identity.hex(), reason)
            self._send_consumer(identity, [pack(Error(reason=reason))])
            return
        made = hello.group not in self.message_log.groups
        group = self.message_log.group(hello.group, hello.lossy, hello.start)
        if made:
            self.made_at[group.name] = group.low_water
        self.message_log.join(group, identity, hello.credit)
        self.members[identity] = group
        logger.info("consumer %s joined group %s", identity.hex(), group.name)
        if self.metadata is not None:
            self._describe(identity)

    def _forget(self, identity: bytes) -> None:
        group = self.members.pop(identity, None)
        if self.lender is not None:
            self.lender.forget(identity)
        if group is not None:
            returned = self.message_log.leave(group, identity)
            logger.info("consumer %s left group %s; %d messages go to the others", identity.hex(), group.name, returned)

    def _send_consumer(self, identity: bytes, frames: list[Any]) -> bool:
        """Send, or forget the consumer if its connection is gone (ROUTER_MANDATORY says so at once)."""
        try:
            self.consumer_socket.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
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
        for group, member, entry in list(self.message_log.dispatch()):
            frames = entry.frames if self.lender is None else self.lender.frames_for(member.identity, entry)
            if frames is None:
                self.message_log.hand_back(group, member, entry.offset)
                continue
            control = pack(Deliver(offset=entry.offset, skipped=group.skipped))
            if self._send_consumer(member.identity, [control, *frames]):
                self.counters["messages_out"] += 1
                self.counters["bytes_out"] += entry.nbytes
        if self.producers_done():
            self._send_ends()

    def _send_ends(self) -> None:
        verdict = None
        for group in self.message_log.groups.values():
            if group.next_offset < self.message_log.next_offset or group.redeliver or group.outstanding():
                continue
            for identity in list(group.members):
                if identity not in group.end_sent:
                    group.end_sent.add(identity)
                    verdict = verdict or self.report.final_verdict()
                    self._send_consumer(identity, [pack(self._end_for(group, verdict))])

    @staticmethod
    def _end_for(group: Group, verdict: Verdict) -> End:
        """The stream's end as ``group`` gets it: incomplete for a lossless group that skipped messages (it was made,
        or came back, after the log had let go of them), whatever the stream's own verdict."""
        if group.lossy or not group.skipped:
            return End(complete=verdict.complete, summary=verdict.summary, skipped=group.skipped,
                       missing=verdict.missing)
        return End(complete=False, skipped=group.skipped, missing=verdict.missing,
                   summary=f"{verdict.summary}\ngroup {group.name!r} never got the stream's first {group.skipped} "
                           "messages: the buffer had let go of them before the group was made (a buffer with a "
                           "spill directory keeps a stream for groups to come)")
