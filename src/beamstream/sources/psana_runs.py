"""Where the ``psana2`` source's runs come from: XTC2 files one by one (``files:``), or one run named by
experiment, run number and folder (``exp:``, ``run:``, ``dir:``), which psana itself shares out among the
ranks when the producer is one of several MPI ranks.

The LCLS-II layout of a run in ``dir``: big data ``<exp>-r<run:04d>-s<stream:03d>-c<chunk:03d>.xtc2`` and,
beside it, small data ``smalldata/<exp>-r<run:04d>-s<stream:03d>-c<chunk:03d>.smd.xtc2`` (each event's
timestamp and where its big data lies; psana's ``smdwriter`` makes one from a big-data file).

Offline: psana 4.3's ``DataSource(exp=, run=, dir=)`` first asks the SLAC logbook for the run's files
(``DataSourceBase._get_file_info_from_db``; off the SLAC network its ``requests.get`` raises ConnectionError
outside psana's own ``try``), and scans ``dir/smalldata`` when the logbook has no list, or one whose files
are not under an explicit ``dir``. With ``dir`` given and ``live`` off, :func:`open_run` goes straight to
that scan. ``live: true`` keeps the logbook: psana needs its file list to follow a run being written, so
live reading works only where the logbook answers.

Under MPI (this process is one of N > 1 ranks of an MPI launch: the launcher's ``PMI_SIZE`` or
``OMPI_COMM_WORLD_SIZE``, as ``beamstream produce`` tells one), psana is imported in its ``mpi`` mode and
``DataSource(exp=...)`` distributes the run: rank 0 reads the small data (smd0), ranks 1 … ``eb_nodes``
(``PS_EB_NODES``, default 1) build events, and every further rank (big data) is sent batches of events as
it asks for them and reads only their big data. Only big-data ranks see events; each event reaches one of
them. psana's calls are collective: every rank opens the same DataSources in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

from beamstream.errors import SourceError

MPI_LAUNCHERS = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))
"""Where MPI launchers put a process's rank and their number: MPICH/Hydra's mpirun (and srun's PMI), Open MPI's."""
PSANA_MPI_OPTIONS = {"eb_nodes": "PS_EB_NODES", "smd_n_events": "PS_SMD_N_EVENTS"}
"""Spec options psana reads from the environment when it distributes a run, and their variables."""
PASSED_THROUGH = ("live", "batch_size", "detectors", "xdetectors")
"""Spec options handed to ``psana.DataSource`` as they are (when set)."""
LOGBOOK_QUERY = "_get_file_info_from_db"
"""psana's method (of ``psana.psexp.ds_base.DataSourceBase``) that asks the SLAC logbook for a run's files."""

_UNREAD: dict[str, tuple[str, Any]] = {}
"""Under MPI, the run a reader opened (to check it) but did not read, by its spec (JSON), for the next reader of
that spec in this process (``beamstream produce`` opens the source once to fail fast, then again to read)."""


def mpi_ranks(environment: Mapping[str, str]) -> int:
    """How many ranks the MPI launch this process belongs to has (1 when it was not started by an MPI launcher)."""
    for rank_name, size_name in MPI_LAUNCHERS:
        if rank_name in environment and environment.get(size_name, "").isdigit():
            return int(environment[size_name])
    return 1


def distributed(spec: Any, environment: Mapping[str, str]) -> bool:
    """Whether psana shares ``spec``'s run out among this MPI launch's ranks: a run named by experiment and run
    number, read by more than one MPI rank. SourceError when there are too few ranks for psana to do so."""
    ranks = mpi_ranks(environment)
    if spec.files is not None or ranks == 1:
        return False
    if environment.get("PS_SRV_NODES", "0") != "0":
        raise SourceError("psana2 source: PS_SRV_NODES asks psana for small-data server ranks, which this source "
                          "does not use (they would read nothing and send nothing); unset PS_SRV_NODES")
    builders = spec.eb_nodes or int(environment.get("PS_EB_NODES", "1"))
    if ranks < builders + 2:
        raise SourceError(
            f"psana2 source: psana shares a run out among MPI ranks as one small-data reader, {builders} event "
            f"builder(s) (eb_nodes) and at least one big-data rank, so it needs {builders + 2} ranks or more; this "
            f"launch has {ranks}: run it with mpirun -n 1 or -n {builders + 2} or more"
        )
    return True


def run_label(spec: Any) -> str:
    """How errors name the run ``spec`` reads by experiment and run number."""
    return f"run {spec.run} of {spec.exp}" + (f" in {spec.dir}" if spec.dir is not None else "")


def check_layout(spec: Any) -> None:
    """SourceError unless ``spec.dir`` holds run ``spec.run`` of ``spec.exp`` in the LCLS-II layout: small-data
    files and, for each, its big-data file (so that psana does not fail, or under MPI stop one rank, half way)."""
    folder = Path(spec.dir)
    if not folder.is_dir():
        raise SourceError(f"psana2 source: dir {str(folder)!r} is not a folder; fix dir: in the spec (the run's "
                          "xtc folder, holding <exp>-r<run>-s<stream>-c<chunk>.xtc2 and smalldata/)")
    pattern = f"{spec.exp}-r{spec.run:04d}-s*.smd.xtc2"
    small = sorted((folder / "smalldata").glob(pattern))
    if not small:
        others = sorted(path.name for path in (folder / "smalldata").glob("*.smd.xtc2"))[:5]
        raise SourceError(
            f"psana2 source: no small data of {run_label(spec)}: nothing matches {folder / 'smalldata' / pattern} "
            f"(found there: {', '.join(others) or 'nothing'}); fix exp:, run: or dir: in the spec, or give the "
            f"run's files: (psana's smdwriter makes small data from them)"
        )
    for path in small:
        big = folder / path.name.replace(".smd.xtc2", ".xtc2")
        if not big.is_file():
            raise SourceError(f"psana2 source: {path} has no big-data file {big} beside it; the run in {folder} "
                              "is incomplete")


def open_run(spec: Any, psana: Any, parallel: bool) -> tuple[str, Iterator[Any]]:
    """A label for errors and the runs of the DataSource of ``spec``'s experiment and run (``parallel``: psana's
    MPI mode, which every rank must call alike); SourceError naming the run when psana cannot open it."""
    if spec.dir is not None:
        check_layout(spec)
    label = run_label(spec)
    if parallel:
        for option, variable in PSANA_MPI_OPTIONS.items():
            if getattr(spec, option) is not None:
                os.environ[variable] = str(getattr(spec, option))
    options = {name: getattr(spec, name) for name in PASSED_THROUGH if getattr(spec, name)}
    options |= {"skip_calib_load": "all"} if spec.skip_calib_load else {}
    options |= {"max_events": spec.max_events} if spec.max_events is not None else {}
    if spec.dir is not None:
        options["dir"] = str(spec.dir)
    from psana.psexp.ds_base import DataSourceBase

    offline = spec.dir is not None and not spec.live
    # offline, psana's logbook query answers "no list" for the time DataSource() sets the run's files up
    logbook = mock.patch.object(DataSourceBase, LOGBOOK_QUERY, lambda self, runnum: {}) if offline else nullcontext()
    try:
        with logbook:
            source = psana.DataSource(exp=spec.exp, run=spec.run, **options)
    except Exception as exc:  # psana raises anything here: AssertionError, FileNotFoundError, requests' errors
        where = "" if offline else " (without dir:, or with live: true, psana asks the SLAC logbook for the files)"
        raise SourceError(f"psana2 source: cannot open {label}{where}: {type(exc).__name__}: {exc}") from exc
    return label, source.runs()


def open_files(file: str, spec: Any, psana: Any) -> Iterator[Any]:
    """The runs of one XTC2 file; SourceError naming the file when psana cannot open it."""
    options = {"skip_calib_load": "all"} if spec.skip_calib_load else {}
    try:
        source = psana.DataSource(files=file, **options)
    except Exception as exc:  # psana raises anything here, e.g. AttributeError from its own logger
        raise SourceError(f"psana2 source: cannot read {file} as XTC2: {type(exc).__name__}: {exc}") from exc
    return source.runs()


def end_early(run: Any, events: Iterator[Any]) -> None:
    """End psana's distribution of ``run`` after this big-data rank stopped taking its ``events`` (an error, a
    stop): psana's own early end, ``run.terminate()``, tells rank 0 to read no further small data, and this
    rank goes through the batches already on their way to it, which psana reads and drops, so that every rank
    (and the final gather of :func:`beamstream.producer.run_mpi`) ends instead of waiting for it. The other
    big-data ranks end their shares early, with the events they were given."""
    run.terminate()
    for _ in events:
        pass


class Runs:
    """The runs one reader of ``spec`` reads, each with a label for errors; ``parallel`` when psana shares them out
    among MPI ranks (then :meth:`each` yields, on each rank, only the events psana gives that rank).

    Files are opened anew by every call (psana's runs iterate once). A run by number is opened once until it is
    read: :meth:`each` reads the run :meth:`first` opened to check it, and under MPI so does the next reader of
    the same spec in this process (:data:`_UNREAD`), since every DataSource makes psana read the small data's
    first chunk (up to ``PS_SMD_CHUNKSIZE``, 256 MB) again and is a collective call. :meth:`labels` answers from
    the first run :meth:`first` saw, so that it is never a collective call.
    """

    def __init__(self, spec: Any, psana: Any, parallel: bool) -> None:
        self.spec = spec
        self.psana = psana
        self.parallel = parallel
        self._labels: tuple[str, int] | None = None
        self._unread: dict[str, tuple[str, Any]] = _UNREAD if parallel else {}
        self._key = spec.model_dump_json()

    def first(self) -> Iterator[tuple[str, Any]]:
        """(label, first run) of each file, or of the run named by experiment and run number; SourceError for a
        file (or a run) without runs."""
        if self.spec.files is None:
            label, run = self._run()
            self._labels = self._labels or (run.expt, run.runnum)
            yield label, run
            return
        for file in self.spec.files:
            run = next(open_files(file, self.spec, self.psana), None)
            if run is None:
                raise SourceError(f"psana2 source: {file} holds no run")
            self._labels = self._labels or (run.expt, run.runnum)
            yield file, run

    def each(self) -> Iterator[tuple[str, Any]]:
        """(label, run) of every run to read, in order: the run by number (the spec names one), or every run of
        every file."""
        if self.spec.files is None:
            self._run()
            yield self._unread.pop(self._key)
            return
        for file in self.spec.files:
            for run in open_files(file, self.spec, self.psana):
                yield file, run

    def labels(self) -> tuple[str, int]:
        """The experiment and run number the first run says it is."""
        if self._labels is None:
            next(self.first())
        return self._labels

    def _run(self) -> tuple[str, Any]:
        """The unread run by number, opened if there is none."""
        if self._key not in self._unread:
            label, runs = open_run(self.spec, self.psana, self.parallel)
            run = next(runs, None)
            if run is None:
                raise SourceError(f"psana2 source: {label} holds no run")
            self._unread[self._key] = (label, run)
        return self._unread[self._key]
