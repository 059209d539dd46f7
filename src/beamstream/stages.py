"""What each stage of a stream promises, as protocols, and the spec base class of each plugin kind.

A plugin is a pydantic model (its options, ``extra="forbid"``, tagged by a ``type`` literal)
registered under an entry point group (see :mod:`beamstream.plugins`). The model builds the
runtime object that does the work: ``open()`` for sources, ``build()`` for steps and
serializers, ``open(context)`` for sinks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from beamstream.batch import Batch, Share
from beamstream.wire import FieldInfo
from beamstream.wire.metadata import RunMetadata


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def each_once(names: list[str], what: str) -> list[str]:
    """``names`` if none is given twice; ValueError naming those that are (``what``: the items, e.g. ``channels``)."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"each of the {what} once: {', '.join(repeated)} given more than once")
    return names


class Source(Protocol):
    """Reads events. ``partition`` says which events a rank owns, ``read`` yields them.

    A source may also have ``metadata() -> RunMetadata``: what it knows of the run (experiment,
    run, constants, where each field was read), called once before the first event is sent; and
    ``take_omitted() -> list[int]``: the sequence numbers of its share it left out on purpose since
    last asked, in increasing order (they are reported as omitted, not lost); and ``abandon()``: called
    when the producer fails before it reads its share (a sink that cannot open), for a source whose
    ranks read together (psana's MPI mode) to let the others end.
    """

    def partition(self, rank: int, producers: int) -> Share:
        """The share of rank ``rank`` among ``producers`` producers; shares never overlap."""
        ...

    def read(self, share: Share) -> Iterator[Batch]:
        """The events of ``share`` in increasing sequence order, in batches of any size."""
        ...


class Step(Protocol):
    """Transforms a stream of batches (e.g. calibrates, crops, re-batches).

    A step that drops events on purpose (a hit veto) also has ``take_omitted() -> list[int]``, as a source may:
    the sequence numbers it dropped since last asked, in increasing order, reported as omitted, not lost.
    """

    def __call__(self, batches: Iterator[Batch]) -> Iterator[Batch]: ...


class Serializer(Protocol):
    """Turns a batch into payload frames; its class turns frames back into arrays."""

    name: str

    def encode(self, batch: Batch) -> list[Any]:
        """Payload frames (bytes-like) holding every field of ``batch``."""
        ...

    def decode(self, fields: Sequence[FieldInfo], frames: Sequence[Any]) -> dict[str, np.ndarray]:
        """The arrays of a payload, shaped as ``fields`` says."""
        ...


@dataclass(frozen=True, slots=True)
class SinkContext:
    """Where a sink runs: the stream and this producer's rank among all producers; ``key``, the stream's
    :class:`~beamstream.security.streamkey.StreamKey` when it is sealed (a sink that sends messages seals them)."""

    stream_id: str
    rank: int
    producers: int
    key: Any = None


class Sink(Protocol):
    """Delivers encoded messages (see :mod:`beamstream.wire`) somewhere."""

    def send(self, message: Any) -> None:
        """Deliver one data message; raise on failure, never drop silently."""
        ...

    def close(self, end: Any) -> None:
        """Deliver the end-of-stream message ``end`` and release resources."""
        ...


class SourceSpec(SpecModel):
    """Options of a source plugin."""

    @abstractmethod
    def open(self) -> Source:
        """Open the source for reading."""

    def field_names(self) -> set[str] | None:
        """The fields every batch of this source has, when the spec alone says so (None: known only once read)."""
        return None

    def check_here(self) -> None:
        """What ``beamstream spec check`` can also check in the data this source names where it is on this machine
        (SourceError, as ``open`` would raise); nothing by default. Not run for a spec checked for the service."""

    def described(self) -> RunMetadata | None:
        """The stream's description as far as the spec alone says it (e.g. each field's shape and dtype), for
        ``spec check`` to run the steps' ``describe`` on; None when it is known only once read."""
        return None


class StepSpec(SpecModel):
    """Options of a processing step plugin."""

    @abstractmethod
    def build(self) -> Step:
        """The step these options describe."""

    def fields_needed(self) -> list[str]:
        """The fields this step reads: its ``field`` option, or its ``fields`` list, if it has one."""
        field = getattr(self, "field", None)
        fields = getattr(self, "fields", None)
        return [field] if isinstance(field, str) else list(fields) if isinstance(fields, list) else []

    def fields_after(self, names: set[str]) -> set[str]:
        """The fields of a batch after this step, given those before it (the same, unless a step says otherwise)."""
        return names

    def complete(self, metadata: RunMetadata) -> StepSpec:
        """These options with what the step takes from the stream's description filled in from ``metadata`` (the
        description as it reaches this step), before the step is built; the same unless a step does so."""
        return self

    def describe(self, metadata: RunMetadata) -> RunMetadata:
        """The stream's description after this step (:mod:`beamstream.description`); the same unless the step
        changes a field's geometry or which fields there are."""
        return metadata


class SerializerSpec(SpecModel):
    """Options of a serializer plugin."""

    @abstractmethod
    def build(self) -> Serializer:
        """The codec these options describe."""


class SinkSpec(SpecModel):
    """Options of a sink plugin."""

    @property
    def receivers(self) -> int:
        """Over how many receivers the sink spreads the producers by rank (the messages' ``receivers``,
        docs/wire-format.md): 1 unless the sink says otherwise (a ``stream`` sink with a list of endpoints)."""
        return 1

    @property
    def checksummed(self) -> bool:
        """Whether what the sink sends or writes carries each payload's checksum: the producer computes it only
        if a sink does (True unless the sink says otherwise)."""
        return True

    @property
    def sealable(self) -> bool:
        """Whether the sink can carry a sealed stream (``--key-file``; every request service stream is sealed): True
        unless the sink says otherwise (one that speaks another protocol, with no room for a seal)."""
        return True

    @abstractmethod
    def open(self, context: SinkContext) -> Sink:
        """A sink for the producer described by ``context``."""
