"""The buffer's message log and consumer groups, without sockets (tested directly).

Every accepted message gets an offset (0, 1, 2, …) in one log. A consumer *group* reads the
whole log; its members share it (each message to exactly one member at a time). A lossless
group keeps every message until a member acknowledges it; a message a member did not
acknowledge before leaving goes back to the group. A lossy group (a live viewer) is always handed the newest
message and told how many older ones it skipped.

Memory is bounded. Without a spill directory a message stays resident until every lossless
group has acknowledged it; :meth:`MessageLog.make_room` evicts what it may and says whether another message fits, and the
service stops reading from producers (so they block) while it does not. With a spill directory
(:class:`~beamstream.buffer.segments.Segments`) every message is also written to disk as it
arrives; memory then only caches the newest messages, groups read older ones from disk, a new
group can replay the whole retained stream, and producers block only when the spill is full
of messages some lossless group still needs.

A message whose payload lies in its producer's shared memory (an ``shm://`` producer endpoint) carries a
``lease`` on that slot (``arena``, ``nbytes``, ``budget``). It stays in memory as any other message, and also while
the leases on its arena hold at most the arena's ``budget`` (half of it); beyond that the oldest messages of that
arena that no lossless group needs and no member holds leave memory, and ``released`` is called with each (the
buffer tells its producer the slot is free; with a spill directory the disk still has it). So a producer's arena,
like ``max_bytes``, bounds what the buffer keeps for groups to come, and the producer waits while its arena is full
of messages a group still needs.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from beamstream.buffer.segments import Segments


@dataclass(slots=True)
class Entry:
    """One accepted message: its frames as received and what the buffer needs to know about it."""

    offset: int
    frames: list[Any]
    nbytes: int
    kind: Literal["data", "end"]
    lease: Any = None  # the producer's shared-memory slot its payload frames are views of, if they are


@dataclass(slots=True)
class Member:
    """One consumer of a group: how many more messages it asked for, which it has not acknowledged."""

    identity: bytes
    credit: int = 0
    unacked: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Group:
    """A consumer group's position in the log.

    ``next_offset`` is the next offset never handed to any member; ``redeliver`` holds offsets
    handed to a member that left without acknowledging them; ``acked`` counts acknowledged
    offsets below ``next_offset`` so that ``low_water`` (everything below it is acknowledged)
    can advance.
    """

    name: str
    lossy: bool
    next_offset: int
    low_water: int
    members: OrderedDict[bytes, Member] = field(default_factory=OrderedDict)
    redeliver: deque[int] = field(default_factory=deque)
    acked: set[int] = field(default_factory=set)
    delivered: int = 0
    skipped: int = 0
    end_sent: set[bytes] = field(default_factory=set)
    progressed_at: float = field(default_factory=time.monotonic)  # when low_water last moved (or the group began)

    def acknowledge(self, offset: int) -> None:
        self.acked.add(offset)
        before = self.low_water
        while self.low_water in self.acked:
            self.acked.discard(self.low_water)
            self.low_water += 1
        if self.low_water != before:
            self.progressed_at = time.monotonic()

    def outstanding(self) -> int:
        """Messages handed out and not yet acknowledged."""
        return sum(len(member.unacked) for member in self.members.values())


class MessageLog:
    """The log with its groups; ``max_bytes`` bounds the payload held in memory.

    With ``segments`` every message is also on disk; ``max_spill`` (None: no bound) bounds the
    disk, ``retention_s`` (None: keep while there is room) how long messages every lossless
    group has acknowledged stay there for replay.
    """

    def __init__(self, max_bytes: int, segments: Segments | None = None, max_spill: int | None = None,
                 retention_s: float | None = None, released: Callable[[Entry], None] = lambda entry: None) -> None:
        self.max_bytes = max_bytes
        self.released = released
        self.leased: dict[str, int] = {}  # arena → bytes of its slots that messages in memory hold
        self.budgets: dict[str, int] = {}  # arena → how many of its bytes the log holds at most
        self.segments = segments
        self.max_spill = max_spill
        self.retention_s = retention_s
        self.entries: dict[int, Entry] = {}
        self.full_since: float | None = None  # when make_room last began to find no room
        self.resident_bytes = 0
        self.groups: dict[str, Group] = {}
        on_disk = sorted(segments.index) if segments else []
        self.first_offset = on_disk[0] if on_disk else 0  # oldest offset still held (memory or disk)
        self.next_offset = on_disk[-1] + 1 if on_disk else 0

    @property
    def spilled_bytes(self) -> int:
        """Bytes in segment files on disk (0 without a spill directory)."""
        return self.segments.total_bytes if self.segments else 0

    # --- producers --------------------------------------------------------------------------

    def make_room(self, nbytes: int) -> bool:
        """Evict what may go (see :meth:`evict`) to fit a message of ``nbytes``; True if it can be accepted now
        (always true for an empty log)."""
        self.evict(nbytes)
        if self.segments is None:
            room = self.resident_bytes + nbytes <= self.max_bytes or not self.entries
        else:
            room = self.max_spill is None or self.spilled_bytes + nbytes <= self.max_spill or not self.segments.index
        if room:
            self.full_since = None
        elif self.full_since is None:
            self.full_since = time.monotonic()
        return room

    def append(self, frames: list[Any], nbytes: int, kind: Literal["data", "end"], lease: Any = None) -> Entry:
        """Accept a message (written through to disk first, with a spill directory); ``lease``: the shared-memory
        slot its payload lies in."""
        entry = Entry(self.next_offset, frames, nbytes, kind, lease)
        if lease is not None:
            self.leased[lease.arena] = self.leased.get(lease.arena, 0) + lease.nbytes
            self.budgets[lease.arena] = lease.budget
        if self.segments is not None:
            self.segments.append(entry.offset, frames, kind)
        self.entries[entry.offset] = entry
        self.next_offset += 1
        self.resident_bytes += nbytes
        return entry

    def entry(self, offset: int) -> Entry:
        """Message ``offset``, from memory or else from disk."""
        cached = self.entries.get(offset)
        if cached is not None:
            return cached
        frames = self.segments.read(offset)
        return Entry(offset, frames, sum(len(frame) for frame in frames[1:]), "data")

    # --- groups -------------------------------------------------------------------------------

    def group(self, name: str, lossy: bool, start: Literal["earliest", "now"]) -> Group:
        """The group ``name``, created at the oldest held offset (``earliest``) or the next one (``now``).

        A group made to read from the earliest after the log let go of the stream's first messages (no spill
        directory, or its retention or size bound) counts them as skipped: it will never see them."""
        if name not in self.groups:
            offset = self.first_offset if start == "earliest" else self.next_offset
            self.groups[name] = Group(name=name, lossy=lossy, next_offset=offset, low_water=offset,
                                      skipped=self.first_offset if start == "earliest" else 0)
        return self.groups[name]

    def restore_group(self, name: str, lossy: bool, low_water: int) -> Group:
        """The group ``name`` as a spill directory recorded it (everything below ``low_water`` acknowledged), at the
        oldest held offset if the log let go of messages it had not acknowledged (counted as skipped)."""
        offset = max(low_water, self.first_offset)
        self.groups[name] = Group(name=name, lossy=lossy, next_offset=offset, low_water=offset,
                                  skipped=offset - low_water)
        return self.groups[name]

    def join(self, group: Group, identity: bytes, credit: int) -> Member:
        member = group.members.setdefault(identity, Member(identity))
        member.credit += credit
        return member

    def leave(self, group: Group, identity: bytes) -> int:
        """Remove a member; its unacknowledged messages go back to the group. Returns how many."""
        member = group.members.pop(identity, None)
        if member is None:
            return 0
        if group.lossy:
            for offset in member.unacked:
                group.acknowledge(offset)
        else:
            group.redeliver.extend(sorted(member.unacked))
        group.end_sent.discard(identity)
        return len(member.unacked)

    def acknowledge(self, group: Group, member: Member, offsets: list[int], credit: int) -> None:
        for offset in offsets:
            if offset in member.unacked:
                member.unacked.discard(offset)
                group.acknowledge(offset)
        member.credit += credit

    def next_for(self, group: Group) -> Entry | None:
        """The next message this group should hand out, or None.

        A lossy group always gets the newest message, skipping (and counting) older ones it
        has not seen; a lossless group gets redeliveries first, then the log in order.
        """
        if group.lossy and group.next_offset < self.next_offset - 1:
            self._skip_to(group, max(self.next_offset - 1, self.first_offset))
        if group.redeliver:
            return self.entry(group.redeliver.popleft())  # lossless groups hold back deletion
        if group.next_offset < self.first_offset:
            self._skip_to(group, self.first_offset)
        if group.next_offset >= self.next_offset:
            return None
        entry = self.entry(group.next_offset)
        group.next_offset += 1
        return entry

    @staticmethod
    def hand_back(group: Group, member: Member, offset: int) -> None:
        """Undo the handing of ``offset`` to ``member`` (it could not be sent now): the group hands it out again."""
        member.unacked.discard(offset)
        member.credit += 1
        group.delivered -= 1
        group.redeliver.appendleft(offset)

    @staticmethod
    def _skip_to(group: Group, offset: int) -> None:
        for skipped in range(group.next_offset, offset):
            group.acknowledge(skipped)
        group.skipped += offset - group.next_offset
        group.next_offset = offset

    def dispatch(self) -> Iterator[tuple[Group, Member, Entry]]:
        """(group, member, message) for every message that can be handed out now (round robin over members)."""
        for group in self.groups.values():
            while True:
                member = next((m for m in group.members.values() if m.credit > 0), None)
                if member is None:
                    break
                entry = self.next_for(group)
                if entry is None:
                    break
                member.credit -= 1
                member.unacked.add(entry.offset)
                group.members.move_to_end(member.identity)
                group.delivered += 1
                yield group, member, entry

    # --- memory -------------------------------------------------------------------------------

    def stalled_groups(self, seconds: float) -> list[Group]:
        """The lossless groups that hold the oldest message still needed and have acknowledged nothing for
        ``seconds`` while the log has been full: the ones keeping producers waiting."""
        lossless = [group for group in self.groups.values() if not group.lossy]
        if not lossless or self.full_since is None:
            return []
        needed_by = min(group.low_water for group in lossless)
        now = time.monotonic()
        return [group for group in lossless
                if group.low_water == needed_by and now - max(group.progressed_at, self.full_since) > seconds]

    def drop_group(self, group: Group) -> None:
        """Forget ``group``: its position and what it has not acknowledged no longer hold messages back."""
        self.groups.pop(group.name, None)

    def evict(self, needed: int = 0) -> None:
        """Make room for ``needed`` more bytes, never dropping a message a lossless group still needs.

        Memory keeps messages while it can, so a late group can start from the earliest. With
        a spill directory, memory drops its oldest copies freely (the disk has them) and whole
        segments go once every lossless group is past them and they are older than the retention
        (or, with no retention set, once the spill is full).
        """
        needed_by = min((group.low_water for group in self.groups.values() if not group.lossy),
                        default=self.next_offset)
        self._return_leases(needed_by)
        if self.segments is None:
            self._drop_memory(needed, until=needed_by)
            self.first_offset = max(self.first_offset, min(self.entries, default=self.next_offset))
            return
        self._drop_memory(needed, until=self.next_offset)
        full = self.max_spill is not None and self.spilled_bytes + needed > self.max_spill
        if self.retention_s is not None or full:
            self.segments.delete_before(needed_by, older_than=None if full else self.retention_s)
            self.first_offset = min(self.segments.index, default=self.next_offset)

    def _drop_memory(self, needed: int, until: int) -> None:
        for offset in list(self.entries):
            if offset >= until or self.resident_bytes + needed <= self.max_bytes:
                return
            self._drop(offset)

    def _drop(self, offset: int) -> None:
        entry = self.entries.pop(offset)
        self.resident_bytes -= entry.nbytes
        if entry.lease is not None:
            self.leased[entry.lease.arena] -= entry.lease.nbytes
            self.released(entry)

    def _return_leases(self, needed_by: int) -> None:
        """Drop the oldest messages of every arena whose leases are over its budget, as far as no lossless group
        needs them and no member holds them (see the module's docstring)."""
        over = {arena: self.budgets[arena] for arena, held in self.leased.items() if held > self.budgets[arena]}
        if not over:
            return
        held = (offset for group in self.groups.values() for member in group.members.values()
                for offset in member.unacked)
        until = min(needed_by, min(held, default=needed_by))
        for offset in list(self.entries):
            if offset >= until or not over:
                return
            lease = self.entries[offset].lease
            if lease is not None and lease.arena in over:
                self._drop(offset)
                if self.leased[lease.arena] <= over[lease.arena]:
                    del over[lease.arena]
