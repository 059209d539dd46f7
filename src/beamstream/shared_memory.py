"""Shared-memory arenas: where a producer writes payloads once and every reader on the node maps them read-only.

An :class:`Arena` is a file in ``/dev/shm`` (mode :func:`~beamstream.modes.file_mode`, 0600 by default) that one
producer owns: it writes each message's payload frames into a slot (:mod:`beamstream.wire.slots`) and sends only a
:class:`~beamstream.wire.slots.SlotRef`. Slots are taken in a ring, first in first out; a slot comes back when its
reader has released it (:meth:`Arena.release`), and the space it took is reused once every older slot has come back
too. :class:`ArenaMaps` is the reader's side: every arena it has been referred to, mapped read-only, and the frames
of a slot as read-only memoryviews into the mapping, without a copy.

The arena's file is unlinked when its producer closes it; one left by a producer that was killed is removed by the
next arena made on the node (:func:`remove_stale`), as its name holds the dead producer's process id. A reader
keeps its mapping of an unlinked arena until it closes it: what it holds stays readable, and nothing new is
written there.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from beamstream.errors import TransportError, WireFormatError
from beamstream.modes import file_mode
from beamstream.wire.frames import frame_buffer
from beamstream.wire.messages import DataHeader, parse_header
from beamstream.wire.slots import ARENA_NAME, SLOT_HEADER, SlotRef, aligned, parse_ref, slot_bytes

SHM_DIR = Path("/dev/shm")
DEFAULT_ARENA_BYTES = 256 << 20
"""A producer's arena unless its stream sink says otherwise (``shm_bytes``)."""

_GENERATION = np.dtype("<u8")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
"""How a producer maps its arena: every page at once (it writes them all, in turn), not a page fault per page. A
reader maps lazily: a group's member reads only its share of the slots, and mapping a 320 MiB arena at once took
36 ms here, against 28 ms of page faults for reading all of it and 2 ms for a twentieth."""


def remove_stale(directory: Path = SHM_DIR) -> list[Path]:
    """Remove the arenas in ``directory`` whose producer process no longer runs; returns them."""
    removed = []
    for path in directory.glob("beamstream-shm-*"):
        if not ARENA_NAME.fullmatch(path.name):
            continue
        pid = int(path.name.split("-")[2])
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArenaFull(Exception):
    """No room for a slot until older slots are released."""


class Arena:
    """A producer's ring of slots in a new file of ``nbytes`` in ``directory`` (``/dev/shm``).

    :meth:`put` writes frames into the next slot and returns its reference, or raises ArenaFull; :meth:`release`
    gives a slot back; :meth:`held` counts the slots not given back. A slot larger than the whole arena raises
    TransportError saying which setting to raise.
    """

    def __init__(self, nbytes: int = DEFAULT_ARENA_BYTES, directory: Path = SHM_DIR) -> None:
        if not directory.is_dir():
            raise TransportError(f"shared memory needs {directory} (a tmpfs), which this machine does not have: "
                                 "use an ipc:// or tcp:// endpoint instead")
        remove_stale(directory)
        self.name = f"beamstream-shm-{os.getpid()}-{secrets.token_hex(8)}"
        self.path = directory / self.name
        self.nbytes = aligned(nbytes)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file_mode())
        try:
            os.ftruncate(descriptor, self.nbytes)
            self._map = mmap.mmap(descriptor, self.nbytes, flags=mmap.MAP_SHARED | _POPULATE)
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            raise TransportError(f"cannot make a shared-memory arena of {self.nbytes} bytes in {directory}: "
                                 f"{exc.strerror}") from None
        finally:
            os.close(descriptor)
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        self._generation = 0
        self._head = 0  # where the next slot goes
        self._live: deque[tuple[int, int, int]] = deque()  # (generation, offset, end) of every slot not reclaimed
        self._released: set[int] = set()

    def held(self) -> int:
        """Slots written and not yet released."""
        return len(self._live) - len(self._released)

    def put(self, frames: Sequence[Any]) -> SlotRef:
        """Copy ``frames`` (bytes-like, contiguous) into a new slot; ArenaFull if it does not fit now."""
        views = [np.frombuffer(frame_buffer(frame), dtype=np.uint8) for frame in frames]  # empty ones too
        sizes = [view.nbytes for view in views]
        needed = slot_bytes(sizes)
        if needed > self.nbytes:
            raise TransportError(f"a message of {sum(sizes)} bytes does not fit in the shared-memory arena of "
                                 f"{self.nbytes} bytes: raise the stream sink's shm_bytes")
        offset = self._room(needed)
        if offset is None:
            raise ArenaFull(f"{needed} bytes")
        self._generation += 1
        ref = SlotRef(arena=self.name, generation=self._generation, offset=offset, sizes=sizes)
        self._bytes[offset:offset + 8].view(_GENERATION)[0] = self._generation
        for view, (start, end) in zip(views, ref.spans(), strict=True):
            self._bytes[start:end] = view
        self._live.append((self._generation, offset, offset + needed))
        self._head = offset + needed
        return ref

    def _room(self, needed: int) -> int | None:
        """Where a slot of ``needed`` bytes fits now, or None."""
        if not self._live:
            return 0
        tail = self._live[0][1]
        if self._head > tail:  # the live slots lie in [tail, head): room after them, else at the start
            if self._head + needed <= self.nbytes:
                return self._head
            return 0 if needed <= tail else None
        return self._head if self._head + needed <= tail else None  # they wrapped: room between head and tail

    def release(self, generation: int) -> bool:
        """Give slot ``generation`` back; False if no such slot is held (released already, or never written)."""
        if generation in self._released or not any(live[0] == generation for live in self._live):
            return False
        self._released.add(generation)
        while self._live and self._live[0][0] in self._released:
            self._released.discard(self._live.popleft()[0])
        return True

    def close(self) -> None:
        """Unlink the arena's file and unmap it (readers keep their own mappings); safe to call twice."""
        self.path.unlink(missing_ok=True)
        if not self._map.closed:
            del self._bytes
            with contextlib.suppress(BufferError):  # a frame still being sent holds a view: the mapping goes with it
                self._map.close()


class ArenaMaps:
    """A reader's read-only mappings of the arenas it was referred to (at most ``keep``, the least recently used
    unmapped first), in ``directory``.

    :meth:`frames` is a slot's frames as read-only memoryviews, valid while the slot is not released. A reader that
    passes slots on to others (a buffer) adopts each arena (``adopt``): it links the arena's file under a name of its own
    (:meth:`alias`), so that its readers can still map the arena after its producer has ended and removed its name;
    :meth:`close` removes those links (and :func:`remove_stale` those of a reader that was killed).
    """

    def __init__(self, directory: Path = SHM_DIR, keep: int = 64, adopt: bool = False) -> None:
        self.directory = directory
        self.keep = keep
        self.adopt = adopt
        self._maps: OrderedDict[str, tuple[mmap.mmap, memoryview]] = OrderedDict()
        self._aliases: dict[str, str] = {}  # an adopted arena's name → the name of this reader's link to it

    def size(self, name: str) -> int:
        """Bytes of arena ``name`` (mapped)."""
        return self._view(name).nbytes

    def alias(self, name: str) -> str:
        """The name under which this reader's own readers find arena ``name`` (adopted when it was mapped)."""
        return self._aliases.get(name, name)

    def frames(self, ref: SlotRef) -> list[memoryview]:
        """The frames ``ref`` points at; WireFormatError if the arena cannot be mapped, the slot does not lie
        inside it, or the slot was reused since (its generation differs)."""
        view = self._view(ref.arena)
        if ref.end > view.nbytes:
            raise WireFormatError(f"slot {ref.generation} of arena {ref.arena} ends at byte {ref.end}, beyond the "
                                  f"arena's {view.nbytes} bytes")
        found = int(np.frombuffer(view, dtype=_GENERATION, count=1, offset=ref.offset)[0])
        if found != ref.generation:
            raise WireFormatError(f"slot {ref.generation} of arena {ref.arena} was reused (it holds slot {found}): "
                                  "its producer gave it back before this reader released it")
        return [view[start:end] for start, end in ref.spans()]

    def _view(self, name: str) -> memoryview:
        if name in self._maps:
            self._maps.move_to_end(name)
            return self._maps[name][1]
        try:
            descriptor = os.open(self.directory / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise WireFormatError(f"cannot open shared-memory arena {name} in {self.directory}: {exc.strerror} "
                                  "(its producer is gone, or runs on another node: read it over ipc:// or tcp://)") \
                from None
        try:
            size = os.fstat(descriptor).st_size
            if size < SLOT_HEADER:
                raise WireFormatError(f"shared-memory arena {name} holds {size} bytes: not an arena")
            mapping = mmap.mmap(descriptor, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(descriptor)
        self._maps[name] = (mapping, memoryview(mapping))  # read-only: the mapping is
        if self.adopt and name not in self._aliases:
            alias = f"beamstream-shm-{os.getpid()}-{secrets.token_hex(8)}"
            with contextlib.suppress(OSError):  # gone already: its slots are then readable only here
                os.link(self.directory / name, self.directory / alias)
                self._aliases[name] = alias
        while len(self._maps) > self.keep:
            self._unmap(*self._maps.popitem(last=False)[1])
        return self._maps[name][1]

    def close(self) -> None:
        """Unmap every arena whose frames nobody holds any more (the others go with their last view), and remove
        this reader's links to the arenas it adopted."""
        while self._maps:
            self._unmap(*self._maps.popitem()[1])
        for alias in self._aliases.values():
            (self.directory / alias).unlink(missing_ok=True)
        self._aliases.clear()

    @staticmethod
    def _unmap(mapping: mmap.mmap, view: memoryview) -> None:
        with contextlib.suppress(BufferError):
            view.release()
            mapping.close()


def read_slot(maps: ArenaMaps, frames: list[Any], *, copy: bool = False) -> tuple[list[Any], SlotRef | None]:
    """A message received over shared memory as the Client reads it: a data message's header and its slot's
    frames (read-only views of the mapped slot, or with ``copy`` copies of them) and the slot's reference; an end
    message as it came, and None. WireFormatError if the frames are no such message or the slot cannot be read."""
    header = parse_header(frames[0])
    if not isinstance(header, DataHeader):
        return frames, None
    if len(frames) != 2:
        raise WireFormatError(f"a data message over shared memory is a header and a slot reference, got "
                              f"{len(frames)} frames")
    ref = parse_ref(frame_buffer(frames[1]))
    payload: list[Any] = maps.frames(ref)
    if copy:
        payload = [bytes(frame) for frame in payload]
    return [frames[0], *payload], ref

