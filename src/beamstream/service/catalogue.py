"""Runs, not file paths: the files of "experiment E, run R", found where the facility keeps them.

Two layouts, each configured in the service's settings:

- ``xtc_root``: the LCLS-II layout,
  ``<xtc_root>/<instrument>/<experiment>/xtc/<experiment>-r<run:04d>-s<NNN>-c<NNN>.xtc2``, the
  instrument being the experiment's first three letters (``xpptut15`` → ``xpp``); read with the
  ``psana2`` source. A run with small data (``xtc/smalldata/<experiment>-r<run:04d>-s<NNN>-*.smd.xtc2``)
  also has its ``dir``, the xtc folder: psana reads it by experiment, run and folder, as the facility
  does, and shares it out among MPI ranks (:mod:`beamstream.sources.psana_runs`).
- ``hdf5_pattern``: a glob with ``{experiment}`` and ``{run}`` (format fields, e.g.
  ``/data/{experiment}/raw/r{run:04d}/*.h5``); read with the ``hdf5`` source.

Each experiment's calibration folder (pedestals, gains, masks, geometry: the constants files a
non-admin's steps may read) is ``calib_pattern`` with ``{experiment}`` and ``{instrument}``, by
default ``<xtc_root>/<instrument>/<experiment>/calib`` when ``xtc_root`` is set.

Experiment names are checked (letters, digits, ``_``, ``-``, ``.``) before they become part of a
path, so a request cannot walk the file system.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
XTC_FILE = re.compile(r"(?P<experiment>.+)-r(?P<run>\d{4,})-s\d{3}-c\d{3}\.xtc2")


class RunNotFound(LookupError):
    """No such experiment or run; the message says what was looked for and where."""


@dataclass(frozen=True, slots=True)
class Run:
    experiment: str
    run: int
    source: str  # the source type that reads its files
    files: list[str]
    dir: str | None = None  # the xtc folder of a run with small data: psana reads it by exp, run and dir


class Catalogue:
    """Finds runs under ``xtc_root`` (LCLS-II layout) and ``hdf5_pattern``, and experiments' calibration folders
    (``calib_pattern``); any may be None."""

    def __init__(self, xtc_root: Path | None = None, hdf5_pattern: str | None = None,
                 calib_pattern: str | None = None) -> None:
        self.xtc_root = xtc_root
        self.hdf5_pattern = hdf5_pattern
        if calib_pattern is None and xtc_root is not None:
            calib_pattern = str(xtc_root / "{instrument}" / "{experiment}" / "calib")
        self.calib_pattern = calib_pattern

    def calibration_folder(self, experiment: str) -> Path | None:
        """Where the constants files of ``experiment`` are (None: this catalogue knows no such folder)."""
        if self.calib_pattern is None:
            return None
        checked = _checked(experiment)
        return Path(self.calib_pattern.format(experiment=checked, instrument=checked[:3].lower()))

    def find(self, experiment: str, run: int) -> Run:
        """The files of ``run`` of ``experiment``; RunNotFound naming the places looked in."""
        for found in self._runs(_checked(experiment), run):
            return found
        raise RunNotFound(f"no run {run} of experiment {experiment!r}: looked for {self._where(experiment, run)}")

    def runs(self, experiment: str) -> list[Run]:
        """Every run of ``experiment`` the catalogue finds, in run order; RunNotFound if none."""
        found = sorted(self._runs(_checked(experiment), None), key=lambda item: item.run)
        if not found:
            raise RunNotFound(f"no runs of experiment {experiment!r}: looked for {self._where(experiment, None)}")
        return found

    def _runs(self, experiment: str, run: int | None) -> list[Run]:
        found: list[Run] = []
        if self.xtc_root is not None:
            by_run: dict[int, list[str]] = {}
            for path in sorted(self._xtc_folder(experiment).glob(f"{experiment}-r*.xtc2")):
                match = XTC_FILE.fullmatch(path.name)
                if match and match["experiment"] == experiment and (run is None or int(match["run"]) == run):
                    by_run.setdefault(int(match["run"]), []).append(str(path))
            found += [Run(experiment, number, "psana2", files, self._small_data_folder(experiment, number))
                      for number, files in by_run.items()]
        if self.hdf5_pattern is not None and not found:
            numbers = [run] if run is not None else self._hdf5_runs(experiment)
            for number in numbers:
                files = sorted(glob.glob(self.hdf5_pattern.format(experiment=experiment, run=number)))
                if files:
                    found.append(Run(experiment, number, "hdf5", files))
        return found

    def _hdf5_runs(self, experiment: str) -> list[int]:
        """Run numbers that the pattern's ``{run}`` matches among existing files."""
        pattern = self.hdf5_pattern.format(experiment=experiment, run=_RunMarker())
        wildcard = pattern.replace(_RunMarker.TOKEN, "*")
        regex = re.compile(re.escape(pattern).replace(re.escape(_RunMarker.TOKEN), r"(\d+)").replace(r"\*", ".*"))
        return sorted({int(match[1]) for path in glob.glob(wildcard) if (match := regex.fullmatch(path))})

    def _small_data_folder(self, experiment: str, run: int) -> str | None:
        """The xtc folder of ``run`` when it has small data (what psana's DataSource(exp=, run=, dir=) reads)."""
        folder = self._xtc_folder(experiment)
        return str(folder) if any((folder / "smalldata").glob(f"{experiment}-r{run:04d}-s*.smd.xtc2")) else None

    def _xtc_folder(self, experiment: str) -> Path:
        return self.xtc_root / experiment[:3].lower() / experiment / "xtc"

    def _where(self, experiment: str, run: int | None) -> str:
        places = []
        if self.xtc_root is not None:
            number = "*" if run is None else f"{run:04d}"
            places.append(str(self._xtc_folder(experiment) / f"{experiment}-r{number}-s*-c*.xtc2"))
        if self.hdf5_pattern is not None:
            places.append(self.hdf5_pattern.replace("{experiment}", experiment) if run is None
                          else self.hdf5_pattern.format(experiment=experiment, run=run))
        return " and ".join(places) or "nothing: this service has no catalogue (set xtc_root or hdf5_pattern)"


class _RunMarker:
    """Stands for ``{run}`` (with any format spec) while the pattern is turned into a glob and a regex."""

    TOKEN = "\x00RUN\x00"

    def __format__(self, spec: str) -> str:
        return self.TOKEN


def _checked(experiment: str) -> str:
    if not EXPERIMENT.fullmatch(experiment):
        raise RunNotFound(f"{experiment!r} is not an experiment name (letters, digits, _ - . only)")
    return experiment
