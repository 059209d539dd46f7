"""What a request may make its jobs open: every path its spec and resources name, granted or refused before
anything runs (docs/security.md, "What a job may open").

The paths come from :func:`beamstream.spec_paths.paths_opened`, one walk over the validated models that
finds every field any plugin marks as a path it reads or writes, a facility's plugins included. Then:

- **Writes** stay in the stream's folder: a relative path (``dir: run14``) is placed under the stream's
  output folder (:data:`OUTPUT_FOLDER`, in the folder its jobs run in), where its owner lists and fetches
  what was written (``GET /v1/streams/{id}/files``); one that climbs out (``..``) is refused. Absolute
  paths (and ``~``) are for callers who may open any path.
- **Reads**, for a caller who may not open any path: the files of the catalogue run the service found for
  the request, and files under the calibration folder of the request's experiment (the catalogue's); no
  patterns, no relative paths, nothing else. Symbolic links are followed before the check.

Callers who may open any path are the policy's admins, and everyone on a service without a policy (the
first-run default, where everyone may request any data). A refusal names the place in the request and the
path as the caller wrote it, and what they may name instead; it says nothing about the file itself (whether
it exists, what it is), which is never opened or looked at here.
"""

from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from beamstream.spec_paths import Location, OpenedPath, UnmarkedPath, paths_opened

OUTPUT_FOLDER = "output"


class PathRefused(Exception):
    """A request names paths its caller may not make a job open; ``problems`` has one line per path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PathGrant:
    """What one request may make its jobs open: ``any_path``, or ``files`` (exact paths the service chose) and
    whatever lies under ``folders``; ``where`` says in words what that is, for refusals."""

    any_path: bool
    files: frozenset[str] = frozenset()
    folders: tuple[str, ...] = ()
    where: str = field(default="no file: request a catalogue run (experiment and run) or a simulated source")

    def may_read(self, path: str) -> bool:
        if self.any_path or path in self.files:
            return True
        if not os.path.isabs(path) or glob.has_magic(path):
            return False
        real = os.path.realpath(path)
        return any(real.startswith(folder + os.sep) for folder in self.folders)


def stream_folder(state_dir: Path, stream_id: str) -> Path:
    """The folder a stream's jobs run in (its spec, keys, logs, and its :data:`OUTPUT_FOLDER`)."""
    return state_dir.resolve() / "streams" / stream_id


def output_files(folder: Path) -> list[tuple[str, int]]:
    """Every file under ``folder``'s output folder (paths relative to it, sizes in bytes), sorted; symbolic
    links are not followed nor listed."""
    root = folder / OUTPUT_FOLDER
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if not path.is_symlink() and path.is_file():
                found.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return sorted(found)


def output_file(folder: Path, relative: str) -> Path | None:
    """The file ``relative`` under ``folder``'s output folder; None for anything else (a folder, a path that
    climbs out, a symbolic link that leads out)."""
    root = os.path.realpath(folder / OUTPUT_FOLDER)
    real = os.path.realpath(os.path.join(root, relative))
    return Path(real) if real.startswith(root + os.sep) and os.path.isfile(real) else None


def confined(section: dict[str, Any], model: BaseModel, grant: PathGrant, origin: str) -> dict[str, Any]:
    """``section`` (a request's spec or resources, as sent; ``model`` its validated form) with every relative
    write path moved under :data:`OUTPUT_FOLDER`; PathRefused listing every path ``grant`` does not allow, each
    named as ``origin.LOCATION``."""
    problems: list[str] = []
    moved = section
    try:
        opened_paths = paths_opened(model)
    except UnmarkedPath as exc:  # a plugin's path the walk cannot classify: refused, whoever asks
        raise PathRefused([f"{origin}.{exc}"]) from None
    for opened in opened_paths:
        where = f"{origin}.{opened.where}"
        if opened.mode == "write":
            placed = _output_path(opened, grant, where, problems)
            if placed is not None and placed != opened.path:
                moved = _replaced(moved, opened.location, placed)
        elif not grant.may_read(opened.path):
            problems.append(f"{where}: you may not make a job read {opened.path!r}; you may name {grant.where}")
    if problems:
        raise PathRefused(problems)
    return moved


def _output_path(opened: OpenedPath, grant: PathGrant, where: str, problems: list[str]) -> str | None:
    path = opened.path
    if os.path.isabs(path) or path.startswith("~"):
        if grant.any_path:
            return path
        problems.append(f"{where}: a job writes into the stream's own folder only: give a relative path "
                        f"(it goes under {OUTPUT_FOLDER}/, listed by GET /v1/streams/ID/files), not {path!r}")
        return None
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        problems.append(f"{where}: {path!r} leaves the stream's folder; give a path without '..'")
        return None
    return posixpath.join(OUTPUT_FOLDER, normal) if normal != "." else OUTPUT_FOLDER


def _replaced(section: dict[str, Any], location: Location, value: str) -> dict[str, Any]:
    """A copy of ``section`` with the value at ``location`` (keys and list indices) set to ``value``."""
    head, *rest = location
    if not rest:
        return {**section, head: value}
    container = section.get(head) if isinstance(section, dict) else section[head]
    if isinstance(container, list):
        index, *deeper = rest
        items = list(container)
        items[index] = value if not deeper else _replaced(items[index], tuple(deeper), value)
        return {**section, head: items}
    return {**section, head: _replaced(container or {}, tuple(rest), value)}
