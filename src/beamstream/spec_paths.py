"""The paths a stream spec makes its jobs open: every spec field that names a file or folder says so.

A plugin's option that names something a job will read or write is annotated with a marker::

    file: ReadPath                      # a file the job reads (pathlib.Path)
    files: list[ReadPattern]            # files or glob patterns the job reads (str)
    dir: WritePath                      # a folder the job writes into

:func:`paths_opened` walks a validated spec (any pydantic model: a whole spec, a resources section)
and lists every such value with its location, so that whoever runs the spec on someone else's behalf
(the request service) can grant or refuse each one before anything runs, whatever plugin it belongs
to, a facility's own included. A :class:`pathlib.Path` value in a field without a marker is refused
(:class:`UnmarkedPath`): a plugin cannot name a path the walk would miss by forgetting its marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel

from beamstream.errors import SpecError

Mode = Literal["read", "write"]
Location = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Opens:
    """Marks a spec field whose value (or each of its values) is a path a job opens: ``read`` or ``write``."""

    mode: Mode


ReadPath = Annotated[Path, Opens("read")]
"""A file a job reads."""
ReadPattern = Annotated[str, Opens("read")]
"""A file a job reads, or a glob pattern of files it reads."""
WritePath = Annotated[Path, Opens("write")]
"""A file or folder a job writes (into)."""


@dataclass(frozen=True, slots=True)
class OpenedPath:
    """One path a spec names: where in the spec (``location``, keys and list indices), the path as written, and
    whether a job reads or writes it."""

    location: Location
    path: str
    mode: Mode

    @property
    def where(self) -> str:
        """The location as ``beamstream spec check`` writes locations (``steps[1].pedestal.file``)."""
        text = ""
        for part in self.location:
            text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
        return text


class UnmarkedPath(SpecError):
    """A spec value is a path in a field that does not say whether a job reads or writes it (a plugin's bug)."""


def paths_opened(model: BaseModel, location: Location = ()) -> list[OpenedPath]:
    """Every path ``model`` (a validated spec, or any part of one) names in a marked field, in field order;
    UnmarkedPath for a :class:`pathlib.Path` value in a field without a marker."""
    found: list[OpenedPath] = []
    for name, field in type(model).model_fields.items():
        marker = _marker(field.metadata) or _marker_in(field.annotation)
        _collect(getattr(model, name), (*location, name), marker, found)
    return found


def _collect(value: Any, location: Location, marker: Opens | None, found: list[OpenedPath]) -> None:
    if value is None:
        return
    if isinstance(value, BaseModel):
        found += paths_opened(value, location)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _collect(item, (*location, index), marker, found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect(item, (*location, key), marker, found)
    elif marker is not None and isinstance(value, (str, PurePath)):
        found.append(OpenedPath(location, str(value), marker.mode))
    elif isinstance(value, PurePath):
        raise UnmarkedPath(f"{OpenedPath(location, str(value), 'read').where}: a path in a field that does not say "
                           "whether a job reads or writes it; the plugin must annotate it with ReadPath, ReadPattern "
                           "or WritePath (beamstream.spec_paths)")


def _marker(metadata: Any) -> Opens | None:
    return next((item for item in metadata or () if isinstance(item, Opens)), None)


def _marker_in(annotation: Any) -> Opens | None:
    """The marker anywhere in a type (``list[ReadPattern] | None``)."""
    if (marker := _marker(getattr(annotation, "__metadata__", None))) is not None:
        return marker
    return next((found for arg in get_args(annotation) if (found := _marker_in(arg)) is not None), None)
