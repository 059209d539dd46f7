"""A stream's description (:class:`~beamstream.wire.metadata.RunMetadata`) as each worker assembles it.

In this order: what the source knows (its reader's ``metadata()``, where it has one), each
field's event shape (where the source did not say) and dtype from the first batch the source yields,
the spec's ``metadata:`` section put over that, then each step's ``describe`` in the order the
steps run (roi, bin and pad change a field's geometry; select drops fields), each step first
completed from the description as it reaches it (azimuthal takes its geometry from there).
Geometry lists (``origin``, ``binning``, and ``valid`` once a ``pad`` added pixels) have one entry per event
axis once a step fills them; ``pixel_size`` covers the last ``len(pixel_size)`` axes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from itertools import chain
from typing import Any

import msgspec

from beamstream.batch import Batch, little_endian
from beamstream.errors import SpecError, StepError
from beamstream.quantities import description_problems
from beamstream.spec_input import texts_read_from_numbers
from beamstream.wire.metadata import FieldMetadata, Quantity, RunMetadata


TEXT_KEYS = frozenset({"facility", "instrument", "experiment", "sample", "times", "detector", "source", "units", "mask",
                       "unit"})
"""The keys of a description that hold text (a value that looks like a number there is meant)."""


def metadata_from_spec(section: dict[str, Any]) -> RunMetadata:
    """The spec's ``metadata:`` section as a RunMetadata; ValueError saying which key is wrong (a key the
    description does not have, with the one meant if it is close; a value of the wrong type or unit)."""
    if unknown := unknown_keys(section):
        raise ValueError("\n  metadata: ".join(unknown))
    if numbers := texts_read_from_numbers(section, TEXT_KEYS):
        raise ValueError("\n  metadata: ".join(numbers))
    try:
        metadata = msgspec.convert(section, RunMetadata)
    except msgspec.ValidationError as exc:
        raise ValueError(f"metadata: {exc}") from None
    if problems := description_problems(metadata):
        raise ValueError("\n  metadata: ".join(problems))
    return metadata


def unknown_keys(section: Any) -> list[str]:
    """``location: what is wrong`` for each key of a spec's ``metadata:`` section that a description does not have
    (:class:`RunMetadata`, its fields' :class:`FieldMetadata`, its constants' ``{value, unit}``): a mistyped key
    would otherwise be dropped without a word."""
    if not isinstance(section, dict):
        return []
    problems = _unknown(section, RunMetadata, "")
    for kind, struct in (("fields", FieldMetadata), ("constants", Quantity)):
        entries = section.get(kind)
        if isinstance(entries, dict):
            problems += [problem for name, entry in entries.items() if isinstance(entry, dict)
                         for problem in _unknown(entry, struct, f"{kind}.{name}.")]
    return problems


def _unknown(mapping: dict[str, Any], struct: type, where: str) -> list[str]:
    known = [field.encode_name for field in msgspec.structs.fields(struct)]
    problems = []
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
            meant = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"{where}{key}: not a key of the description ({meant}its keys here: {', '.join(known)})")
    return problems


def first_batch(batches: Iterator[Batch]) -> tuple[Batch | None, Iterator[Batch]]:
    """The first batch of ``batches`` (None if there is none) and an iterator that still yields it."""
    for batch in batches:
        return batch, chain([batch], batches)
    return None, iter(())


def describe_stream(spec: Any, reader: Any, first: Batch | None) -> tuple[Any, RunMetadata]:
    """``spec`` with each step completed from the description as it reaches that step (``StepSpec.complete``),
    and the description of the stream it makes, read by ``reader``, whose first batch is ``first``."""
    describe = getattr(reader, "metadata", None)
    metadata = describe() if describe is not None else RunMetadata()
    if first is not None:
        for name, array in first.data.items():
            metadata = metadata.with_field(name, dtype=little_endian(array.dtype).str)
            if not metadata.fields[name].shape:
                metadata = metadata.with_field(name, shape=list(array.shape[1:]))
    if spec.metadata is not None:
        try:
            metadata = metadata.merged(metadata_from_spec(spec.metadata))
        except ValueError as exc:  # validated with the spec already; kept for specs built in code
            raise SpecError(str(exc)) from None
    if problems := description_problems(metadata):  # what the source says, too
        raise SpecError("\n".join(f"metadata: {problem}" for problem in problems))
    steps, metadata = describe_steps(spec.steps, metadata)
    return spec.model_copy(update={"steps": steps}), metadata


def describe_steps(steps: list[Any], metadata: RunMetadata) -> tuple[list[Any], RunMetadata]:
    """``steps`` each completed from the description ``metadata`` as it reaches it, and the description after the
    last; SpecError led by ``steps[N] (TYPE)`` when a step refuses the description (a ``pad`` value the field's
    dtype cannot hold)."""
    completed = []
    for number, step in enumerate(steps):
        try:
            completed.append(step.complete(metadata))
            metadata = completed[-1].describe(metadata)
        except (SpecError, StepError) as exc:
            raise SpecError(f"steps[{number}] ({step.type}): {exc}") from None
    return completed, metadata


class Geometry:
    """A field's shape, origin and binning (one entry per event axis), pixel size and ``valid`` region (one
    ``[start, stop]`` per event axis; empty when every pixel is real), to change and put back."""

    def __init__(self, entry: FieldMetadata) -> None:
        self.shape = list(entry.shape)
        axes = len(self.shape)
        self.origin = list(entry.origin) if len(entry.origin) == axes else [0] * axes
        self.binning = list(entry.binning) if len(entry.binning) == axes else [1] * axes
        self.pixel_size = list(entry.pixel_size)
        self.valid = [list(pair) for pair in entry.valid] if len(entry.valid) == axes else []

    def pixel_axis(self, axis: int) -> int | None:
        """The index in ``pixel_size`` of event axis ``axis`` (None if no pixel size covers it)."""
        index = axis - (len(self.shape) - len(self.pixel_size))
        return index if 0 <= index < len(self.pixel_size) else None

    def changes(self) -> dict[str, list]:
        every = [[0, length] for length in self.shape]  # no padding left: valid is absent
        return {"shape": self.shape, "origin": self.origin, "binning": self.binning, "pixel_size": self.pixel_size,
                "valid": [] if self.valid == every else self.valid}


def change_geometry(metadata: RunMetadata, field: str, change: Any) -> RunMetadata:
    """``metadata`` with ``change(geometry)`` applied to ``field``'s geometry; unchanged when its shape is unknown."""
    entry = metadata.fields.get(field)
    if entry is None or not entry.shape:
        return metadata
    geometry = Geometry(entry)
    change(geometry)
    return metadata.with_field(field, **geometry.changes())
