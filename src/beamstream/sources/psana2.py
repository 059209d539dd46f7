"""``psana2``: events of LCLS-II XTC2 files, read offline with psana (``pip install 'beamstream[psana]'``).

Reading is by ``files=`` only: ``psana.DataSource(exp=..., run=...)`` asks SLAC web services
for the run's file list (and, without ``skip_calib_load``, for calibration constants), which
fails off the SLAC network. ``exp`` and ``run`` in the spec are labels, checked against what
the files say when given.

Each file is read with its own ``DataSource`` in the order given; an event's sequence number
is its index among all events of all files (for one file: its index in the run). With
``files=`` psana does not share events out among MPI ranks (every rank reads every event), so
each rank reads every event's datagrams and evaluates the detectors only for those it owns.

Timestamps: psana's ``evt.timestamp`` is ``seconds << 32 | nanoseconds`` counted from
1990-01-01 00:00 UTC (psana's ``Event.datetime`` and ``psana.detector.utils_psana.seconds``
use that epoch). ``time`` is that instant in seconds since the Unix epoch as float64, which
resolves about 0.24 µs at today's dates: events closer than that share a ``time``, so the exact
value also travels as the uint64 field ``timestamp`` (a bookkeeping field: ``cast`` leaves it alone).

Calibration: with ``skip_calib_load`` (the default; the constants come from a SLAC web service)
psana has no pedestals, gains, masks or geometry, and its ``calib`` (``(raw - pedestals) * gain
* mask`` for area detectors, ``raw`` itself when there are no constants) and ``image`` (built from
``calib``) would hand out raw values under a calibrated name; such fields are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from beamstream.batch import TIMESTAMP_FIELD, Batch, Share
from beamstream.errors import MissingDependency, SourceError, needs_extra
from beamstream.spec_paths import ReadPattern
from beamstream.stages import SourceSpec
from beamstream.wire.metadata import FieldMetadata, RunMetadata

LCLS_EPOCH_OFFSET = 631_152_000
"""Seconds from 1970-01-01 to 1990-01-01 (UTC), the epoch of psana timestamps."""

CALIBRATED_METHODS = frozenset({"calib", "image"})
"""psana detector methods that apply calibration constants: ``AreaDetector.calib`` and ``image`` in
``psana.detector.areadetector``, which the epix, jungfrau, opal, archon and axis detectors inherit or override."""
NUMERIC_KINDS = frozenset("biufc")
INSTALL_HINT = needs_extra("the psana2 source", "psana", package="psana") + " (and Debian's libkrb5-dev first)"

Getter = Callable[[Any], Any]


def unix_seconds(timestamp: int) -> float:
    """Seconds since 1970-01-01 UTC of a psana timestamp (``seconds << 32 | nanoseconds`` since 1990)."""
    return float((timestamp >> 32) + LCLS_EPOCH_OFFSET) + (timestamp & 0xFFFFFFFF) * 1e-9


def import_psana() -> ModuleType:
    """The psana module; MissingDependency with the install command when it is absent.

    Sets ``PS_PARALLEL=none`` first unless the environment already sets it: in its default
    ``mpi`` mode, importing psana in an MPI job of several ranks does a broadcast on
    COMM_WORLD and replaces ``sys.excepthook`` with one that calls ``MPI_Abort``; this
    source reads with ``files=``, where psana's MPI mode shares nothing out anyway.
    (Importing psana still imports mpi4py, which initialises MPI.)
    """
    os.environ.setdefault("PS_PARALLEL", "none")
    try:
        import psana
    except ImportError as exc:
        raise MissingDependency(INSTALL_HINT) from exc
    return psana


def _offered(run: Any, detector: str) -> str:
    """What ``detector`` offers in ``run``, as ``detector.interface.method`` paths."""
    paths = [
        f"{name}.{interface}.{method}"
        for (name, interface), methods in sorted(run.detinfo.items())
        if name == detector
        for method in methods
    ]
    return ", ".join(paths) or "(nothing)"


def _environment_names(run: Any) -> list[str]:
    """Scan and EPICS variable names of ``run``, sorted."""
    return sorted(run.scannames | {alias for alias, _ in run.epicsinfo})


def bind(run: Any, path: str, file: str) -> Getter:
    """The callable that reads ``path`` from one event of ``run``.

    ``path`` is ``detector.interface.method`` (e.g. ``xppcspad.raw.raw``) or the name of a
    scan or EPICS variable. Raises SourceError listing what exists when the run lacks it.
    """
    parts = path.split(".")
    if len(parts) == 1:
        return _bind_variable(run, path, file)
    detector, interface, method = parts
    if detector not in run.detnames:
        raise SourceError(
            f"psana2 source: {file} has no detector {detector!r} (field {path!r}); its detectors: "
            f"{', '.join(sorted(run.detnames))}; fix fields: in the spec"
        )
    if method not in run.detinfo.get((detector, interface), []):
        raise SourceError(
            f"psana2 source: detector {detector!r} in {file} has no {interface}.{method} (field {path!r}); "
            f"it offers: {_offered(run, detector)}; fix fields: in the spec"
        )
    return getattr(getattr(run.Detector(detector), interface), method)


def _bind_variable(run: Any, name: str, file: str) -> Getter:
    """The scan or EPICS variable ``name`` of ``run``; SourceError listing those that exist."""
    if name in run.detnames:
        raise SourceError(
            f"psana2 source: {name!r} is a detector; name one of its methods: {_offered(run, name)}"
        )
    try:
        return run.Detector(name)
    except KeyError:
        raise SourceError(
            f"psana2 source: {file} has no detector or variable {name!r}; its detectors: "
            f"{', '.join(sorted(run.detnames))}; its scan and EPICS variables: "
            f"{', '.join(_environment_names(run)) or '(none)'}; fix fields: in the spec"
        ) from None


class Psana2Reader:
    """The runtime side of :class:`Psana2Source`: partitions and reads the files it was opened on.

    Promises: ``read`` yields one batch per owned event, in increasing ``seq``, with the fields
    ``timestamp`` (uint64, psana's own) and every field of the spec, each with a batch axis of 1.
    """

    def __init__(self, spec: Psana2Source, psana: ModuleType) -> None:
        self.spec = spec
        self.psana = psana
        self.omitted: list[int] = []  # events left out (on_missing: skip) not yet reported

    def take_omitted(self) -> list[int]:
        """The sequence numbers left out (``on_missing: skip``) since last asked."""
        omitted, self.omitted = self.omitted, []
        return omitted

    def metadata(self) -> RunMetadata:
        """LCLS, the experiment and run of the first file's first run (the instrument: the experiment's first
        three letters), and each field's psana path."""
        run = next(self._runs(self.spec.files[0]))
        fields = {name: FieldMetadata(detector=path.split(".")[0], source=f"psana {path}",
                                      mask="zero-is-bad" if "mask" in path.rsplit(".", 1)[-1] else "")
                  for name, path in self.spec.fields.items()}
        fields[TIMESTAMP_FIELD] = FieldMetadata(source="psana evt.timestamp: seconds << 32 | nanoseconds "
                                                       "since 1990-01-01 00:00 UTC")
        return RunMetadata(facility="LCLS", instrument=run.expt[:3].upper(), experiment=run.expt, run=run.runnum,
                           fields=fields)

    def partition(self, rank: int, producers: int) -> Share:
        """Rank ``rank`` of ``producers``: round robin by event index.

        The event count of an XTC2 file is not known before reading it (and may be below
        ``max_events``), so the share has no end: a consumer learns it from the producer's
        end-of-stream message.
        """
        if not 0 <= rank < producers:
            raise ValueError(f"rank {rank} is not in 0..{producers - 1}")
        return Share(rank=rank, producers=producers, start=0, stop=None, block=1)

    def check(self) -> None:
        """SourceError unless every file opens and its first run has every field (and the exp/run given)."""
        for file in self.spec.files:
            run = next(self._runs(file), None)
            if run is None:
                raise SourceError(f"psana2 source: {file} holds no run")
            self._check_labels(run, file)
            for path in self.spec.fields.values():
                bind(run, path, file)

    def read(self, share: Share) -> Iterator[Batch]:
        """The events of ``share`` in increasing ``seq``, one batch each.

        An event where a field returns None raises SourceError naming the event and field,
        or, with ``on_missing: skip``, is left out (not sent; its ``seq`` is not reused, and
        :meth:`take_omitted` reports it, so consumers count it as omitted, not lost).
        """
        stops = [stop for stop in (share.stop, self.spec.max_events) if stop is not None]
        stop = min(stops, default=None)
        seq = -1
        for file in self.spec.files:
            for run in self._runs(file):
                getters = {name: bind(run, path, file) for name, path in self.spec.fields.items()}
                for evt in run.events():
                    seq += 1
                    if stop is not None and seq >= stop:
                        return
                    if share.owns(np.array([seq]))[0]:
                        batch = self._event(seq, evt, getters, file)
                        if batch is None:
                            self.omitted.append(seq)
                        else:
                            yield batch

    def _runs(self, file: str) -> Iterator[Any]:
        """The runs of one file; SourceError naming the file when psana cannot open it."""
        options = {"skip_calib_load": "all"} if self.spec.skip_calib_load else {}
        try:
            source = self.psana.DataSource(files=file, **options)
        except Exception as exc:  # psana raises anything here, e.g. AttributeError from its own logger
            raise SourceError(f"psana2 source: cannot read {file} as XTC2: {type(exc).__name__}: {exc}") from exc
        return source.runs()

    def _check_labels(self, run: Any, file: str) -> None:
        """SourceError when the spec's ``exp`` or ``run`` disagrees with the file's own."""
        for label, wanted, found in (("exp", self.spec.exp, run.expt), ("run", self.spec.run, run.runnum)):
            if wanted is not None and wanted != found:
                raise SourceError(f"psana2 source: {file} is {label} {found!r}, not {wanted!r}; fix {label}: in the spec")

    def _event(self, seq: int, evt: Any, getters: dict[str, Getter], file: str) -> Batch | None:
        """The batch of one event; None when a field is missing and ``on_missing`` is skip."""
        timestamp = evt.timestamp
        data = {TIMESTAMP_FIELD: np.array([timestamp], dtype=np.uint64)}
        for name, getter in getters.items():
            value = getter(evt)
            if value is None:
                if self.spec.on_missing == "skip":
                    return None
                raise SourceError(
                    f"psana2 source: event {seq} (timestamp {timestamp}) of {file} has no data for field "
                    f"{name!r} ({self.spec.fields[name]}); set on_missing: skip to leave such events out"
                )
            data[name] = _row(value, name, self.spec.fields[name])
        return Batch(np.array([seq], dtype=np.int64), np.array([unix_seconds(timestamp)]), data)


def _row(value: Any, name: str, path: str) -> np.ndarray:
    """``value`` as a numeric array with a leading batch axis of 1; SourceError for anything else."""
    array = np.asarray(value)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise SourceError(
            f"psana2 source: field {name!r} ({path}) gave {type(value).__name__} of dtype {array.dtype}, "
            f"not a numeric array; choose a method that returns array data"
        )
    return array[np.newaxis]


class Psana2Source(SourceSpec):
    """Events of LCLS-II XTC2 files read with psana, one batch per event.

    Attributes:
        files: XTC2 files, read one after another; each is opened with
            ``psana.DataSource(files=...)`` (offline: no SLAC web services).
        exp: the experiment (e.g. ``xpptut15``); a label, and an error if a file says otherwise.
        run: the run number; a label, and an error if a file says otherwise.
        fields: output field name -> what to read per event: ``detector.interface.method``
            (``{"image": "xppcspad.raw.raw"}`` calls ``run.Detector("xppcspad").raw.raw(evt)``)
            or the name of a scan or EPICS variable (``run.Detector(name)(evt)``). Every event
            also carries ``timestamp``, psana's uint64 timestamp, so that name is taken.
        max_events: read at most this many events (the first ones).
        skip_calib_load: do not fetch calibration constants (that needs the SLAC web service);
            fields read with a calibrating method (``calib``, ``image``) are then refused,
            as psana would return raw values under that name.
        on_missing: what to do with an event where a field returns None: ``error`` raises
            SourceError; ``skip`` leaves the event out of the stream (it is not sent).
    """

    type: Literal["psana2"] = "psana2"
    files: list[ReadPattern] = Field(min_length=1)
    exp: str | None = None
    run: int | None = None
    fields: dict[str, str] = Field(min_length=1)
    max_events: int | None = Field(None, ge=1)
    skip_calib_load: bool = True
    on_missing: Literal["error", "skip"] = "error"

    @field_validator("fields")
    @classmethod
    def _field_paths(cls, fields: dict[str, str]) -> dict[str, str]:
        """Every path is ``detector.interface.method`` or a variable name; no field is ``timestamp``."""
        if TIMESTAMP_FIELD in fields:
            raise ValueError(f"{TIMESTAMP_FIELD!r} is taken (every event carries psana's timestamp); rename the field")
        for name, path in fields.items():
            parts = path.split(".")
            if not name or len(parts) not in (1, 3) or not all(parts):
                raise ValueError(
                    f"field {name!r}: {path!r} is neither detector.interface.method (e.g. xppcspad.raw.raw) "
                    f"nor a variable name without dots"
                )
        return fields

    @model_validator(mode="after")
    def _calibration_loaded(self) -> Psana2Source:
        """No field reads a calibrating method (:data:`CALIBRATED_METHODS`) while ``skip_calib_load`` is set."""
        if self.skip_calib_load:
            for name, path in self.fields.items():
                reader, _, method = path.rpartition(".")
                if reader and method in CALIBRATED_METHODS:
                    raise ValueError(
                        f"field {name!r}: {path} applies calibration constants, but skip_calib_load is true, so "
                        f"psana has none and would return raw values; read {reader}.raw instead, or set "
                        f"skip_calib_load: false where the SLAC calibration service is reachable"
                    )
        return self

    def field_names(self) -> set[str]:
        return {*self.fields, TIMESTAMP_FIELD}

    def open(self) -> Psana2Reader:
        """Check every file, field and label now, so that ``read`` does not fail half way.

        Raises MissingDependency without psana; SourceError for a missing file, a file psana
        cannot read, an unknown detector (listing the run's detectors), an unknown interface or
        method (listing what the detector offers), or an ``exp``/``run`` the files contradict.
        """
        psana = import_psana()
        for file in self.files:
            if not Path(file).is_file():
                raise SourceError(f"psana2 source: file {file!r} not found; fix files: in the spec")
        reader = Psana2Reader(self, psana)
        reader.check()
        return reader
