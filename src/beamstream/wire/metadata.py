"""What a stream says about itself: the run it comes from, per-run constants, and each field's geometry.

A :class:`RunMetadata` travels once per stream: in the header of each producer's first data
message (``metadata``), in the local buffer's :class:`~beamstream.wire.control.Describe` to every
group member (so a member that never sees a first message, or joins late, still has it), and
in every file beamstream writes (:mod:`beamstream.saving`). Sources fill what they know, a spec's ``metadata:`` section
adds or overrides entries, and steps that change geometry (roi, bin, pad), dtype (cast, calibrate, bin) or
which fields there are (calibrate's ``output``, peakfinder8, select) update the fields they change.
What changes within a run (a scan variable) stays a per-event field.

Units: each constant carries its own (``unit``, as written by whoever filled it); geometry is
in metres. Conventions for axes, pixels and times are in docs/conventions.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Text = Annotated[str, msgspec.Meta(max_length=4096)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
MAX_ENTRIES = 1024
MAX_AXES = 32
Axes = Annotated[list[int], msgspec.Meta(max_length=MAX_AXES)]
Lengths = Annotated[list[float], msgspec.Meta(max_length=MAX_AXES)]
ConstantText = Annotated[str, msgspec.Meta(max_length=1 << 16)]  # a constant's text: a detector's geometry file
Value = float | int | bool | ConstantText | Annotated[list[float], msgspec.Meta(max_length=MAX_ENTRIES)]


class Quantity(msgspec.Struct, frozen=True, omit_defaults=True):
    """A per-run constant: its value and unit (``""`` for none), e.g. photon energy 9500 eV."""

    value: Value
    unit: Annotated[str, msgspec.Meta(max_length=64)] = ""


class FieldMetadata(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """What one field of the stream is, where it was read, and how its pixels map to the detector.

    ``shape`` is one event's shape as sent; ``origin`` is the index, in the source's frame, of the first element sent along each axis,
    ``binning`` how many source pixels one sent pixel sums along each axis, ``pixel_size`` the
    size (metres) of one sent pixel along each axis; ``distance`` the sample-to-detector distance
    (metres). ``mask`` names the convention of a mask field: ``zero-is-bad`` (psana) or
    ``nonzero-is-bad`` (CXI/NeXus ``pixel_mask``). ``dtype`` is the values' numpy dtype as sent
    (``array.dtype.str``, e.g. ``<u2``). ``valid``, set once a ``pad`` step added pixels, is one
    ``[start, stop]`` pair per event axis: the sent indices ``start <= k < stop`` hold real pixels, the
    rest padding (absent: every pixel is real).
    """

    detector: Text = ""
    source: Text = ""
    shape: Axes = []
    units: Annotated[str, msgspec.Meta(max_length=64)] = ""
    origin: Axes = []
    binning: Axes = []
    pixel_size: Lengths = []
    distance: float | None = None
    mask: Literal["", "zero-is-bad", "nonzero-is-bad"] = ""
    dtype: Annotated[str, msgspec.Meta(max_length=64)] = ""
    valid: Annotated[list[Annotated[list[int], msgspec.Meta(min_length=2, max_length=2)]],
                     msgspec.Meta(max_length=MAX_AXES)] = []


class RunMetadata(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """A stream's description; every key may be absent (unknown).

    ``times``: ``event`` when each event's ``time`` is when it was taken, ``none`` when the
    source has no times (events then carry NaN).
    """

    facility: Text = ""
    instrument: Text = ""
    experiment: Text = ""
    run: int | None = None
    sample: Text = ""
    times: Literal["event", "none"] = "event"
    fields: Annotated[dict[Key, FieldMetadata], msgspec.Meta(max_length=MAX_ENTRIES)] = {}
    constants: Annotated[dict[Key, Quantity], msgspec.Meta(max_length=MAX_ENTRIES)] = {}

    def with_field(self, name: str, **changes: object) -> RunMetadata:
        """This description with field ``name``'s entry changed (created if absent)."""
        entry = msgspec.structs.replace(self.fields.get(name, FieldMetadata()), **changes)
        return msgspec.structs.replace(self, fields={**self.fields, name: entry})

    def merged(self, overrides: RunMetadata) -> RunMetadata:
        """This description with every entry ``overrides`` sets put over it (fields and constants entry by entry)."""
        changed = {key: value for key, value in msgspec.structs.asdict(overrides).items()
                   if key not in ("fields", "constants") and value != getattr(RunMetadata(), key)}
        fields = dict(self.fields)
        for name, entry in overrides.fields.items():
            base = fields.get(name, FieldMetadata())
            set_here = {key: value for key, value in msgspec.structs.asdict(entry).items()
                        if value != getattr(FieldMetadata(), key)}
            fields[name] = msgspec.structs.replace(base, **set_here)
        return msgspec.structs.replace(self, **changed, fields=fields, constants={**self.constants, **overrides.constants})

    def to_builtins(self) -> dict:
        """As plain JSON-ready values (what files and ``client.metadata`` consumers read)."""
        return msgspec.to_builtins(self)
