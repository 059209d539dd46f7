"""The buffer's message log and consumer groups, without sockets (tested directly).

Every accepted message gets an offset (0, 1, 2, …) in one log. A consumer *group* reads the
whole log; its members share it (each message to exactly one member at a time). A lossless
group keeps every message until a member acknowledges it; a message a member did not
acknowledge before leaving goes back to the group. A lossy group (a live viewer) is always handed the newest
message and told how many older ones it skipped.

Memory is bounded: a message stays resident until every lossless group has acknowledged it;
:meth:`Log.has_room` says whether another message of a given size fits, and the service stops
reading from producers (so they block) while it does not.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class Entry:
    """One accepted message: its frames as received and what the buffer needs to know about it."""

    offset: int
    frames: list[Any]
    nbytes: int
    kind: Literal["data", "end"]


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

    def acknowledge(self, offset: int) -> None:
        self.acked.add(offset)
        while self.low_water in self.acked:
            self.acked.discard(self.low_water)
            self.low_water += 1

    def outstanding(self) -> int:
        """Messages handed out and not yet acknowledged."""
        return sum(len(member.unacked) for member in self.members.values())


class Log:
    """The in-memory log with its groups; ``max_bytes`` bounds the payload held."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: dict[int, Entry] = {}
        self.first_offset = 0  # oldest offset still held
        self.next_offset = 0
        self.resident_bytes = 0
        self.spilled_bytes = 0  # bytes in segment files on disk (0 without a spill directory)
        self.groups: dict[str, Group] = {}

    # --- producers --------------------------------------------------------------------------

    def has_room(self, nbytes: int) -> bool:
        """True if a message of ``nbytes`` can be held now (always true for an empty log)."""
        self.evict(nbytes)
        return self.resident_bytes + nbytes <= self.max_bytes or not self.entries

    def append(self, frames: list[Any], nbytes: int, kind: Literal["data", "end"]) -> Entry:
        entry = Entry(self.next_offset, frames, nbytes, kind)
        self.entries[entry.offset] = entry
        self.next_offset += 1
        self.resident_bytes += nbytes
        return entry

    # --- groups -------------------------------------------------------------------------------

    def group(self, name: str, lossy: bool, start: Literal["earliest", "now"]) -> Group:
        """The group ``name``, created at the oldest held offset (``earliest``) or the next one (``now``)."""
        if name not in self.groups:
            offset = self.first_offset if start == "earliest" else self.next_offset
            self.groups[name] = Group(name=name, lossy=lossy, next_offset=offset, low_water=offset)
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
            return self.entries[group.redeliver.popleft()]  # lossless groups hold back eviction
        if group.next_offset >= self.next_offset:
            return None
        entry = self.entries[group.next_offset]
        group.next_offset += 1
        return entry

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

    def evict(self, needed: int = 0) -> None:
        """Drop oldest messages until ``needed`` more bytes fit, never one a lossless group still needs.

        Messages stay while memory allows, so a group that joins later can start from the
        earliest one held; lossy groups never hold messages back.
        """
        lossless = [group.low_water for group in self.groups.values() if not group.lossy]
        keep_from = min(lossless, default=self.next_offset)
        while self.first_offset < keep_from and self.resident_bytes + needed > self.max_bytes:
            entry = self.entries.pop(self.first_offset)
            self.resident_bytes -= entry.nbytes
            self.first_offset += 1
