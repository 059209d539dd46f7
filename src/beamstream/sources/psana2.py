"""``psana2``: events of LCLS-II XTC2 files, read offline with psana (``pip install 'beamstream[psana]'``).

Two ways to name the data (:mod:`beamstream.sources.psana_runs` opens them):

- ``files:``: XTC2 files, each read with its own ``DataSource(files=...)`` in the order given; ``exp``
  and ``run`` are labels, checked against what the files say when given. An event's sequence number
  is its index among all events of all files (for one file: its index in the run). psana does not
  share such files out among MPI ranks, so each rank reads every event's datagrams and evaluates the
  detectors only for those it owns (round robin).
- ``exp:``, ``run:`` and ``dir:``: one run in the LCLS-II layout (big data and ``smalldata/``), read
  as the facility reads it, with ``DataSource(exp=, run=, dir=)``, offline (see psana_runs). In one
  process (or each of several local workers) every event is read and kept round robin, as above. As
  one of N > 1 MPI ranks (``mpirun -n N beamstream produce``), psana's own MPI mode shares the run
  out: rank 0 reads the small data, the next ``eb_nodes`` ranks build events, the others read the
  big data of the events psana gives them, each event on one rank and read once. Only those ranks
  produce; rank ``r``'s ``k``-th event is sequence number ``r + k * N``, so each rank's events are
  its round-robin share (:meth:`Psana2Reader.partition`) and a consumer's account stays exact (the
  other ranks end with no events), while the run's order is in ``timestamp``, not in ``seq``.

Timestamps: psana's ``evt.timestamp`` is ``seconds << 32 | nanoseconds`` counted from
1990-01-01 00:00 UTC (psana's ``Event.datetime`` and ``psana.detector.utils_psana.seconds``
use that epoch). ``time`` is that instant in seconds since the Unix epoch as float64, which
resolves about 0.24 µs at today's dates: events closer than that share a ``time``, so the exact
value also travels as the uint64 field ``timestamp`` (a bookkeeping field: ``cast`` leaves it alone).

Calibration: with ``skip_calib_load`` (the default; the constants come from a SLAC web service)
psana has no pedestals, gains, masks or geometry, and its ``calib`` (``(raw - pedestals) * gain
* mask`` for area detectors, ``raw`` itself when there are no constants) and ``image`` (built from
``calib``) would hand out raw values under a calibrated name; such fields of an area detector (an interface that
offers ``image``) are refused when the source opens (and at ``spec check`` where the files are); a digitizer's
``calib`` (hsd's ``raw``/``fex``, which offer no ``image``) is read as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from beamstream.batch import TIMESTAMP_FIELD, Batch, Share
from beamstream.errors import MissingDependency, SourceError, needs_extra
from beamstream.sources.psana_fields import (
    FieldEntry,
    FieldReader,
    FieldSpec,
    bind_fields,
    check_path,
    describe_fields,
    field_entries,
    read_constants,
    refuse_calibrated,
)
from beamstream.sources.psana_runs import PASSED_THROUGH, PSANA_MPI_OPTIONS, Runs, distributed, end_early
from beamstream.spec_paths import ReadPath, ReadPattern
from beamstream.stages import SourceSpec
from beamstream.wire.metadata import MAX_ENTRIES, FieldMetadata, Quantity, RunMetadata

LCLS_EPOCH_OFFSET = 631_152_000
"""Seconds from 1970-01-01 to 1990-01-01 (UTC), the epoch of psana timestamps."""

INSTALL_HINT = needs_extra("the psana2 source", "psana", package="psana") + " (and Debian's libkrb5-dev first)"


def unix_seconds(timestamp: int) -> float:
    """Seconds since 1970-01-01 UTC of a psana timestamp (``seconds << 32 | nanoseconds`` since 1990)."""
    return float((timestamp >> 32) + LCLS_EPOCH_OFFSET) + (timestamp & 0xFFFFFFFF) * 1e-9


def import_psana(parallel: bool = False) -> ModuleType:
    """The psana module; MissingDependency with the install command when it is absent.

    Sets ``PS_PARALLEL`` first unless the environment already sets it: ``mpi`` when psana is to
    share a run out among this MPI launch's ranks (``parallel``), else ``none``: in its ``mpi``
    mode, importing psana in an MPI job of several ranks does a broadcast on COMM_WORLD (so every
    rank must import it at the same point) and replaces ``sys.excepthook`` with one that calls
    ``MPI_Abort``. (Importing psana still imports mpi4py, which initialises MPI.) psana reads
    the variable once: SourceError when ``parallel`` and psana was already imported without it.
    """
    os.environ.setdefault("PS_PARALLEL", "mpi" if parallel else "none")
    try:
        import psana
        from psana.psexp import tools
    except ImportError as exc:
        raise MissingDependency(INSTALL_HINT) from exc
    if parallel and tools.mode != "mpi":
        raise SourceError(f"psana2 source: psana runs in its {tools.mode!r} mode (PS_PARALLEL) in this process, so it "
                          "cannot share the run out among the MPI ranks; unset PS_PARALLEL or set it to mpi")
    return psana


class Psana2Reader:
    """The runtime side of :class:`Psana2Source`: partitions and reads the files it was opened on.

    Promises: ``read`` yields one batch per owned event, in increasing ``seq``, with the fields
    ``timestamp`` (uint64, psana's own) and every field of the spec, each with a batch axis of 1.
    """

    def __init__(self, spec: Psana2Source, psana: ModuleType, parallel: bool = False) -> None:
        self.spec = spec
        self.psana = psana
        self.runs = Runs(spec, psana, parallel)
        self.omitted: list[int] = []  # events left out (on_missing: skip) not yet reported
        self.constants: dict[str, Quantity] | None = None  # the spec's constants, as check read them

    def take_omitted(self) -> list[int]:
        """The sequence numbers left out (``on_missing: skip``) since last asked."""
        omitted, self.omitted = self.omitted, []
        return omitted

    def metadata(self) -> RunMetadata:
        """LCLS, the experiment and run of the first file's first run (the instrument: the experiment's first
        three letters), and each field's psana path."""
        experiment, number = self.runs.labels()
        fields = describe_fields(self.spec.entries())
        fields[TIMESTAMP_FIELD] = FieldMetadata(source="psana evt.timestamp: seconds << 32 | nanoseconds "
                                                       "since 1990-01-01 00:00 UTC")
        return RunMetadata(facility="LCLS", instrument=experiment[:3].upper(), experiment=experiment, run=number,
                           fields=fields, constants=self.constants or {})

    def partition(self, rank: int, producers: int) -> Share:
        """Rank ``rank`` of ``producers``: round robin by event index.

        The event count of an XTC2 file is not known before reading it (and may be below
        ``max_events``), so the share has no end: a consumer learns it from the producer's
        end-of-stream message. Where psana shares the run out among MPI ranks, ``read`` numbers
        the events psana gives this rank into this same share (ranks given none send none).
        """
        if not 0 <= rank < producers:
            raise ValueError(f"rank {rank} is not in 0..{producers - 1}")
        return Share(rank=rank, producers=producers, start=0, stop=None, block=1)

    def check(self) -> None:
        """SourceError unless every file (or the run by number) opens and its first run has every field (and the
        exp/run given)."""
        for file, run in self.runs.first():
            self._check_labels(run, file)
            fields = bind_fields(run, self.spec.entries(), file)
            if self.spec.skip_calib_load:
                refuse_calibrated(fields)
            constants = read_constants(run, self.spec.constants, file)
            self.constants = constants if self.constants is None else self.constants

    def read(self, share: Share) -> Iterator[Batch]:
        """The events of ``share`` in increasing ``seq``, one batch each.

        An event where a field returns None raises SourceError naming the event and field,
        or, with ``on_missing: skip``, is left out (not sent; its ``seq`` is not reused, and
        :meth:`take_omitted` reports it, so consumers count it as omitted, not lost).
        Where psana shares the run out, every event it gives this rank is owned, numbered into ``share``;
        when this rank stops early, the whole run ends early (:func:`~beamstream.sources.psana_runs.end_early`).
        """
        stops = [stop for stop in (share.stop, self.spec.max_events) if stop is not None]
        stop = None if self.runs.parallel else min(stops, default=None)  # psana's max_events counts for all ranks
        seq = share.rank - share.producers if self.runs.parallel else -1
        step = share.producers if self.runs.parallel else 1
        for file, run in self.runs.each():
            getters = bind_fields(run, self.spec.entries(), file)
            events = run.events()
            try:
                for evt in events:
                    seq += step
                    if stop is not None and seq >= stop:
                        return
                    if self.runs.parallel or share.owns(np.array([seq]))[0]:
                        batch = self._event(seq, evt, getters, file)
                        if batch is None:
                            self.omitted.append(seq)
                        else:
                            yield batch
            except BaseException:  # an error here or downstream, a stop, the reading abandoned (GeneratorExit)
                if self.runs.parallel:
                    end_early(run, events)
                raise

    def abandon(self) -> None:
        """This rank will not read its share (its producer failed first): where psana shares the run out, end the
        run early on this rank (:func:`~beamstream.sources.psana_runs.end_early`), so that the other ranks,
        which psana would keep waiting for this one, end with what they were given."""
        if self.runs.parallel:
            for _, run in self.runs.each():
                end_early(run, run.events())

    def _check_labels(self, run: Any, file: str) -> None:
        """SourceError when the spec's ``exp`` or ``run`` disagrees with the file's own."""
        for label, wanted, found in (("exp", self.spec.exp, run.expt), ("run", self.spec.run, run.runnum)):
            if wanted is not None and wanted != found:
                raise SourceError(f"psana2 source: {file} is {label} {found!r}, not {wanted!r}; fix {label}: in the spec")

    def _event(self, seq: int, evt: Any, getters: dict[str, FieldReader], file: str) -> Batch | None:
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
                    f"{name!r} ({getter.path}); set on_missing: skip to leave such events out"
                )
            data[name] = value
        return Batch(np.array([seq], dtype=np.int64), np.array([unix_seconds(timestamp)]), data)


class Psana2Source(SourceSpec):
    """Events of LCLS-II XTC2 files read with psana, one batch per event.

    Attributes:
        files: XTC2 files, read one after another; each is opened with
            ``psana.DataSource(files=...)`` (offline: no SLAC web services). Give these, or ``exp``,
            ``run`` and (offline) ``dir``.
        exp: the experiment (e.g. ``xpptut15``); with ``files``, a label, and an error if a file says otherwise.
        run: the run number; with ``files``, a label, and an error if a file says otherwise.
        dir: the run's xtc folder in the LCLS-II layout (``<exp>-r<run:04d>-s*-c*.xtc2`` and
            ``smalldata/``): read with ``psana.DataSource(exp=, run=, dir=)``, shared out by psana
            among MPI ranks (module docstring). Without it psana finds the folder itself
            (``SIT_PSDM_DATA``) and asks the SLAC logbook for the files.
        live, batch_size, detectors, xdetectors: handed to ``psana.DataSource`` as they are (with
            ``exp``/``run`` only): follow a run being written (needs the logbook), events per batch
            psana sends a big-data rank, only the streams with these detectors, or without them.
        eb_nodes, smd_n_events: psana's ``PS_EB_NODES`` (event-builder ranks) and ``PS_SMD_N_EVENTS``
            (events per small-data chunk) when it shares the run out among MPI ranks.
        fields: output field name -> what to read per event: a path (``{"image": "xppcspad.raw.raw"}``
            calls ``run.Detector("xppcspad").raw.raw(evt)``; any chain of attributes and methods,
            e.g. ``xpphsd.fex._info.arrayFex``; or a scan or EPICS variable, ``run.Detector(name)(evt)``),
            ``{path, dtype}`` (sent as that dtype where every value converts exactly), or several
            fields of one detector, ``{detector, fields}`` (:mod:`beamstream.sources.psana_fields`).
            Every event also carries ``timestamp``, psana's uint64 timestamp, so that name is taken.
        constants: description key -> a path read once, without an event (``xppcspad.raw._uniqueid``),
            from the first run: a per-run constant of the stream's description (a text, a number or
            a short list of numbers), not a per-event array.
        max_events: read at most this many events (the first ones; with ``exp``/``run``, psana's own
            ``max_events``, counted over all ranks).
        skip_calib_load: do not fetch calibration constants (that needs the SLAC web service);
            fields read with an area detector's calibrating method (``calib``, ``image``) are then refused
            when the source opens, as psana would return raw values under that name (a digitizer's ``calib`` is read).
        on_missing: what to do with an event where a field returns None: ``error`` raises
            SourceError; ``skip`` leaves the event out of the stream (it is not sent).
    """

    type: Literal["psana2"] = "psana2"
    files: list[ReadPattern] | None = Field(None, min_length=1)
    exp: str | None = None
    run: int | None = Field(None, ge=0)
    dir: ReadPath | None = None
    live: bool = False
    batch_size: int | None = Field(None, ge=1)
    detectors: list[str] = []
    xdetectors: list[str] = []
    eb_nodes: int | None = Field(None, ge=1)
    smd_n_events: int | None = Field(None, ge=1)
    fields: dict[str, FieldSpec] = Field(min_length=1)
    constants: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    max_events: int | None = Field(None, ge=1)
    skip_calib_load: bool = True
    on_missing: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _files_or_run(self) -> Psana2Source:
        """Either ``files`` or ``exp`` and ``run``; the DataSource options only with the latter."""
        if self.files is None and (self.exp is None or self.run is None):
            raise ValueError("name the data: files: (XTC2 files), or exp: and run: (with dir:, the run's xtc folder)")
        given = [name for name in (*PASSED_THROUGH, *PSANA_MPI_OPTIONS, "dir") if getattr(self, name)]
        if self.files is not None and given:
            raise ValueError(f"{', '.join(given)}: options of a run read by exp: and run:, not of files:; "
                             "give either files: or exp:, run: and dir:")
        return self

    @field_validator("fields")
    @classmethod
    def _field_paths(cls, fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        """Every field has a name of its own, not ``timestamp``, and a path without empty names."""
        field_entries(fields)
        return fields

    @field_validator("constants")
    @classmethod
    def _constant_paths(cls, constants: dict[str, str]) -> dict[str, str]:
        """Every constant has a name (at most 256 characters) and a path without empty names."""
        for key, path in constants.items():
            if not 0 < len(key) <= 256:
                raise ValueError(f"constant {key[:40]!r}: a name has 1 to 256 characters")
            check_path(path, f"constant {key!r}")
        return constants

    def entries(self) -> dict[str, FieldEntry]:
        """Every field, as name -> path and dtype (those of ``{detector, fields}`` entries one by one)."""
        return field_entries(self.fields)

    def field_names(self) -> set[str]:
        return {*self.entries(), TIMESTAMP_FIELD}

    def check_here(self) -> None:
        """For ``beamstream spec check``: the checks ``open`` makes of each file's first run (its ``exp``/``run``,
        every field and constant) on the ``files`` that are on this machine, where psana is installed."""
        present = [file for file in self.files or [] if Path(file).is_file()]
        try:
            psana = import_psana() if present else None
        except MissingDependency:
            return
        if psana is not None:
            Psana2Reader(self.model_copy(update={"files": present}), psana).check()

    def open(self) -> Psana2Reader:
        """Check every file, field and label now, so that ``read`` does not fail half way.

        Raises MissingDependency without psana; SourceError for a missing file, a file psana
        cannot read, an unknown detector (listing the run's detectors), an unknown interface or
        method (listing what the detector offers), or an ``exp``/``run`` the files contradict;
        for a run by number: a ``dir`` without the run's small and big data, or too few MPI ranks
        for psana to share it out (:func:`~beamstream.sources.psana_runs.distributed`).
        """
        parallel = distributed(self, os.environ)
        psana = import_psana(parallel)
        for file in self.files or []:
            if not Path(file).is_file():
                raise SourceError(f"psana2 source: file {file!r} not found; fix files: in the spec")
        reader = Psana2Reader(self, psana, parallel)
        reader.check()
        return reader
