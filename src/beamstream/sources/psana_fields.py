"""What the ``psana2`` source reads, as psana exposes it: paths through a detector's attributes and methods.

A path is a detector and the names after it, any number: ``xppcspad.raw.raw``,
``xpphsd.fex._info.arrayFex``, ``xpphsd.fex._info.enumFex2.value``, ``xppcspad.raw._uniqueid``,
``xppcspad.raw.raw.1``. From ``run.Detector(detector)`` each name is read as an attribute (where
there is none: a mapping's entry of that name or number, a list's, tuple's or array's item of that
number); where that is a method (anything callable) it is called: with no argument when it needs
none (``_segment_ids()``: the same for the whole run), or with the event when it needs one (psana's
``raw(evt)``, ``_info(evt)``, ``eventcodes(evt)``). The names after the method that took the event
are read from its result in every event (attributes, entries, items, or methods called with no
argument). A path whose first name is not a detector of the run is a scan or EPICS variable
(``motor1``; dots allowed), read as ``run.Detector(path)(evt)``. Specs come over the network, so a
path reads attributes of psana's objects only (no ``__`` names) and calls psana's own methods only.

The source's ``fields:`` take paths that read the event: one numeric array per event each.
``constants:`` take paths that do not: read once, from the first file's first run, into the
stream's description as per-run constants (detector ids, geometry text). Each refuses the other kind,
and names the section to use instead.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Discriminator, Field, Tag, field_validator

from beamstream.batch import TIMESTAMP_FIELD, little_endian
from beamstream.errors import SourceError
from beamstream.stages import SpecModel
from beamstream.wire.metadata import MAX_ENTRIES, ConstantText, FieldMetadata, Quantity

CALIBRATED_METHODS = frozenset({"calib", "image"})
"""Methods that apply calibration constants on an area detector's interface (one offering ``image``): ``AreaDetector``'s
in ``psana.detector.areadetector`` (epix, jungfrau, opal, archon, axis); a digitizer's ``calib`` (hsd) does not."""
NUMERIC_KINDS = frozenset("biufc")
TEXT_LIMIT = ConstantText.__metadata__[0].max_length  # the most characters a constant's text holds


class FieldEntry(SpecModel):
    """One field with options, e.g. ``{path: timing.raw.eventcodes, dtype: bool}``.

    Attributes:
        path: what to read each event (see the module docstring).
        dtype: the numeric dtype to send; each value is converted only when every element
            converts exactly (converting back gives it again, NaN included), otherwise the read
            fails naming the event and a value that does not fit. To convert with loss on
            purpose, leave this out and add a ``cast`` step. None: the dtype psana gives.
    """

    path: str = Field(min_length=1)
    dtype: str | None = None

    @field_validator("dtype")
    @classmethod
    def _numeric(cls, value: str | None) -> str | None:
        """A numeric, little-endian numpy dtype name."""
        if value is None:
            return value
        try:
            dtype = np.dtype(value)
        except TypeError:
            raise ValueError(f"{value!r} is not a numpy dtype; use one such as uint8, int32, float32, bool") from None
        if dtype.kind not in NUMERIC_KINDS or dtype != little_endian(dtype):
            raise ValueError(f"{value!r} is not a numeric little-endian dtype; use one such as uint8, int32, float32, "
                             "bool (the stream is little-endian: docs/conventions.md)")
        return value


class DetectorFields(SpecModel):
    """Several fields of one detector in one entry, e.g. ``{detector: xpphsd, fields: {peaks: fex._info.arrayFex,
    gain: {path: fex._info.enumFex2.value, dtype: int8}}}``: each path continues after ``detector.``, and each
    field keeps its own name (the entry's key names the group in errors only).

    Attributes:
        detector: the psana detector name (no dots).
        fields: field name -> path after the detector, or ``{path, dtype}``.
    """

    detector: str = Field(min_length=1)
    fields: dict[str, str | FieldEntry] = Field(min_length=1)

    @field_validator("detector")
    @classmethod
    def _one_name(cls, value: str) -> str:
        """A detector name, without dots."""
        if "." in value:
            raise ValueError(f"{value!r} is not a detector name: write the detector here (xppcspad) and the rest of "
                             "each path under fields: (raw.raw)")
        return value


def _form(value: Any) -> str | None:
    """Which form a ``fields:`` entry takes: a mapping with ``detector`` or ``fields`` is several fields of one
    detector, another mapping a path with options, a text a path; None for anything else. (The tags are no
    spec keys, so that an error's location reads as the spec's own.)"""
    if isinstance(value, DetectorFields) or isinstance(value, Mapping) and {"detector", "fields"} & set(value):
        return "a detector's fields"
    if isinstance(value, Mapping | FieldEntry):
        return "a path with options"
    return "a path" if isinstance(value, str) else None


FieldSpec = Annotated[
    Annotated[str, Tag("a path")] | Annotated[FieldEntry, Tag("a path with options")]
    | Annotated[DetectorFields, Tag("a detector's fields")],
    Discriminator(_form, custom_error_type="field_entry", custom_error_message=(
        "expected a path (xppcspad.raw.raw), {path, dtype} or {detector, fields}")),
]
"""One entry of the source's ``fields:``: a path, a path with options, or several fields of one detector (a mapping
with ``detector`` or ``fields`` is the last, so that its errors are said for that form only)."""


def field_entries(fields: Mapping[str, FieldSpec]) -> dict[str, FieldEntry]:
    """Every field ``fields`` names, as field name -> entry with its whole path; ValueError for a name that is
    empty, ``timestamp`` or given twice, or a path with an empty name between dots."""
    entries: dict[str, FieldEntry] = {}
    for key, spec in fields.items():
        members = spec.fields if isinstance(spec, DetectorFields) else {key: spec}
        prefix = f"{spec.detector}." if isinstance(spec, DetectorFields) else ""
        for name, member in members.items():
            entry = FieldEntry(path=member) if isinstance(member, str) else member
            entry = entry.model_copy(update={"path": prefix + entry.path})
            where = f"field {name!r}" + (f" (in {key})" if prefix else "")
            if name == TIMESTAMP_FIELD:
                raise ValueError(f"{where}: {TIMESTAMP_FIELD!r} is taken (every event carries psana's timestamp); "
                                 "rename the field")
            if not name or name in entries:
                raise ValueError(f"{where}: a field needs a name of its own; rename it")
            check_path(entry.path, where)
            entries[name] = entry
    return entries


def check_path(path: str, where: str) -> None:
    """ValueError unless every name of ``path`` between dots is non-empty and none starts with ``__``."""
    if not all(path.split(".")):
        raise ValueError(f"{where}: {path!r} has an empty name between dots; write detector.interface.method "
                         "(xppcspad.raw.raw), a longer chain (xpphsd.fex._info.arrayFex) or a scan or EPICS variable")
    if any(part.startswith("__") for part in path.split(".")):
        raise ValueError(f"{where}: {path!r} names Python's internals (a name starting with __); a path reads psana's "
                         "attributes and methods only")


def refuse_calibrated(readers: Mapping[str, FieldReader]) -> None:
    """SourceError for a field read with a calibrating method (:data:`CALIBRATED_METHODS`) of an area detector."""
    for name, field in readers.items():
        parts, owner = field.path.split("."), getattr(field.method, "__self__", None)
        index = len(parts) - len(field.rest) - 1  # the method's place in the path
        if getattr(field.method, "__name__", "") in CALIBRATED_METHODS and callable(getattr(owner, "image", None)):
            raise SourceError(f"psana2 source: field {name!r}: {'.'.join(parts[:index + 1])} applies calibration "
                              "constants, but skip_calib_load is true, so psana has none and would return raw values; "
                              f"read {'.'.join(parts[:index])}.raw instead, or set skip_calib_load: false where the "
                              "SLAC calibration service is reachable")


def describe_fields(entries: Mapping[str, FieldEntry]) -> dict[str, FieldMetadata]:
    """Each field's description entry: its detector, its psana path (and dtype), and psana's mask convention
    for a path whose last name contains ``mask``."""
    return {name: FieldMetadata(detector=entry.path.split(".")[0],
                                source=f"psana {entry.path}" + (f" as {entry.dtype}" if entry.dtype else ""),
                                mask="zero-is-bad" if "mask" in entry.path.rsplit(".", 1)[-1] else "")
            for name, entry in entries.items()}


class FieldReader:
    """Reads one field from each event: called with psana's event, it gives the field's row (numeric, with a
    batch axis of 1, in the entry's dtype) or None where psana has no value."""

    def __init__(self, name: str, entry: FieldEntry, method: Any, rest: list[str], file: str) -> None:
        self.name, self.path, self.file = name, entry.path, file
        self.dtype = np.dtype(entry.dtype) if entry.dtype else None
        self.method = method  # the psana callable that takes the event
        self.rest = rest  # names read from its result

    def __call__(self, evt: Any) -> np.ndarray | None:
        value = self._call(self.method, evt, evt)
        for part in self.rest:
            if value is None:
                return None
            found = _lookup(value, part)
            if found is _ABSENT:
                raise SourceError(f"{self._where(evt)}: {type(value).__name__} has no {part!r}; it offers: "
                                  f"{', '.join(_names(value, part)) or '(nothing)'}; fix fields: in the spec")
            if _calls(found, f"{part!r} of {self.path}", f"field {self.name!r}"):
                found = self._call(found, evt)
            value = found
        return None if value is None else self._row(value, evt)

    def _call(self, method: Any, evt: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except Exception as exc:  # psana's methods raise anything, e.g. AttributeError on data an event lacks
            raise SourceError(f"{self._where(evt)}: psana raised {type(exc).__name__}: {exc}") from exc

    def _where(self, evt: Any) -> str:
        return f"psana2 source: field {self.name!r} ({self.path}), event with timestamp {evt.timestamp} of {self.file}"

    def _row(self, value: Any, evt: Any) -> np.ndarray:
        """``value`` as a numeric array of the entry's dtype with a leading batch axis of 1."""
        if isinstance(value, str):
            raise SourceError(f"{self._where(evt)}: gave the text {value[:80]!r}; a field is numeric: choose a number "
                              "or an array, or list text that holds for the whole run under constants:")
        try:
            array = np.asarray(value)
        except ValueError as exc:  # e.g. a list of arrays of several shapes
            raise SourceError(f"{self._where(evt)}: gave {type(value).__name__} that is no array: {exc}") from None
        if array.dtype.kind not in NUMERIC_KINDS:
            raise SourceError(
                f"psana2 source: field {self.name!r} ({self.path}) gave {type(value).__name__} of dtype {array.dtype}, "
                f"not a numeric array; choose a method that returns array data"
            )
        if self.dtype is not None:
            array = self._exactly(array, evt)
        return array[np.newaxis]

    def _exactly(self, array: np.ndarray, evt: Any) -> np.ndarray:
        """``array`` as ``self.dtype``; SourceError naming a value that does not convert exactly. Between integer
        (and bool) dtypes the check is the range of the values; otherwise converting back must give each again."""
        if np.can_cast(array.dtype, self.dtype, "safe"):
            return array.astype(self.dtype, copy=False)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
            converted = array.astype(self.dtype)
            if array.dtype.kind in "biu" and self.dtype.kind in "biu":
                low, high = (0, 1) if self.dtype.kind == "b" else (np.iinfo(self.dtype).min, np.iinfo(self.dtype).max)
                if not array.size or low <= array.min() and array.max() <= high:
                    return converted
                lost = (array < low) | (array > high)
            else:
                back = converted.astype(array.dtype)
                lost = (back != array) & ~(np.isnan(array) & np.isnan(back) if array.dtype.kind in "fc" else False)
        index = tuple(int(i) for i in np.argwhere(lost)[0]) if lost.any() else None
        if index is None:
            return converted
        at = f" at index {index}" if index else ""
        raise SourceError(
            f"{self._where(evt)}: the {array.dtype} value {array[index]!r}{at} is not exactly a {self.dtype} "
            f"(it would become {converted[index]!r}); choose a dtype that holds every value, or leave out dtype: "
            "and add a cast step to convert with loss on purpose"
        )


_ABSENT = object()


def _lookup(value: Any, part: str) -> Any:
    """``value``'s attribute ``part`` where ``value`` is psana's (:func:`_psanas`); else, for a mapping, its entry
    ``part`` (or the number ``part``), for a list, tuple or array, its item number ``part``; :data:`_ABSENT` when
    there is none. Paths come in specs sent over the network, so they reach psana's objects and plain data only."""
    if _psanas(value) and not part.startswith("__"):
        return getattr(value, part, _ABSENT)
    number = int(part) if part.isdigit() else None
    if isinstance(value, Mapping):
        return value.get(part, value.get(number, _ABSENT) if number is not None else _ABSENT)
    if isinstance(value, list | tuple | np.ndarray) and number is not None and number < len(value):
        return value[number]
    return _ABSENT


def bind(run: Any, name: str, entry: FieldEntry, file: str) -> FieldReader:
    """The reader of field ``name`` in ``run``; SourceError naming the bad part of the path and what exists there,
    or, for a path that reads no event, saying to list it under ``constants:``."""
    value, method, rest = _walk(run, entry.path, f"field {name!r}", "fields:", file)
    if method is None:
        if _is_value(value):
            raise SourceError(f"psana2 source: field {name!r}: {entry.path} reads no event (psana gives it without one), "
                              "so it is the same for the whole run; list it under constants: to carry it once in the "
                              "stream's description")
        raise SourceError(f"psana2 source: field {name!r}: {entry.path} is psana's {type(value).__name__}, not a "
                          f"value; name one of what it offers: {_offered_at(run, entry.path, value)}; fix fields: in the spec")
    return FieldReader(name, entry, method, rest, file)


def bind_fields(run: Any, entries: Mapping[str, FieldEntry], file: str) -> dict[str, FieldReader]:
    """The reader of every field of ``entries`` in ``run`` (:func:`bind`)."""
    return {name: bind(run, name, entry, file) for name, entry in entries.items()}


def read_constants(run: Any, constants: Mapping[str, str], file: str) -> dict[str, Quantity]:
    """Each constant's value in ``run`` (a text, a number, or a list of at most MAX_ENTRIES numbers); SourceError
    for a path that is not there, reads the event, or gives anything else."""
    return {key: Quantity(value=_constant(run, key, path, file)) for key, path in constants.items()}


def _constant(run: Any, key: str, path: str, file: str) -> Any:
    value, method, _ = _walk(run, path, f"constant {key!r}", "constants:", file)
    if method is not None:
        raise SourceError(f"psana2 source: constant {key!r}: {path} reads the event, so it may change from event to "
                          "event; list it under fields: instead")
    where = f"psana2 source: constant {key!r}: {path} in {file}"
    if isinstance(value, str):
        if len(value) > TEXT_LIMIT:
            raise SourceError(f"{where} is a text of {len(value)} characters; the stream's description holds at most "
                              f"{TEXT_LIMIT} per text")
        return value
    array = np.asarray(value) if _is_value(value) else None
    if array is None or array.dtype.kind not in "biuf" or array.ndim > 1 or array.size > MAX_ENTRIES:
        kind = type(value).__name__ if array is None else f"{type(value).__name__} of {array.dtype} {array.shape}"
        raise SourceError(f"{where} is {kind}; a constant is a text, a number or at most {MAX_ENTRIES} numbers")
    return array.item() if array.ndim == 0 else [float(item) for item in array]


def _walk(run: Any, path: str, what: str, section: str, file: str) -> tuple[Any, Any, list[str]]:
    """Follow ``path`` from its detector: (the value reached, None, []) when no name along it needs the event,
    or (the object, the method that takes the event, the names after it)."""
    parts = path.split(".")
    detector = parts[0]
    if detector not in run.detnames:
        return None, _variable(run, path, what, section, file), []
    if len(parts) == 1:
        raise SourceError(f"psana2 source: {path!r} is a detector; name one of its methods: {_offered(run, path)}")
    value = run.Detector(detector)
    for index, part in enumerate(parts[1:], 1):
        where = ".".join(parts[:index])
        found = _lookup(value, part)
        if found is _ABSENT:
            raise SourceError(f"psana2 source: detector {detector!r} in {file} has no {'.'.join(parts[1:])} ({what}: "
                              f"{where} has no {part!r}); it offers: {_offered_at(run, where, value, part)}; fix "
                              f"{section} in the spec")
        if not _calls(found, f"{where}.{part}", what):
            value = found
        elif _arguments(found, f"{where}.{part}", what) == 1:
            return value, found, parts[index + 1:]
        else:
            try:
                value = found()
            except Exception as exc:  # psana raises anything, e.g. when calibration constants are not loaded
                raise SourceError(f"psana2 source: {what}: psana raised {type(exc).__name__} calling "
                                  f"{where}.{part}() in {file}: {exc}") from exc
    return value, None, []


def _psanas(value: Any) -> bool:
    """Whether ``value`` is one of psana's objects: its type is defined in a psana module."""
    return type(value).__module__.partition(".")[0] == "psana"


def _calls(found: Any, path: str, what: str) -> bool:
    """Whether ``found`` is a method to call: True for a callable of psana's (a function or object defined in
    psana, or a method bound to one of psana's objects; not a class), False for no callable; SourceError for any
    other callable."""
    if not callable(found):
        return False
    psanas = str(getattr(found, "__module__", None)).startswith("psana.") or _psanas(getattr(found, "__self__", None))
    if isinstance(found, type) or not psanas:
        raise SourceError(f"psana2 source: {what}: {path} is {type(found).__name__}, not one of psana's methods; a path "
                          "calls psana's own methods only")
    return True


def _arguments(method: Any, path: str, what: str) -> int:
    """How many arguments ``method`` needs (0, or 1: the event); SourceError for more, or when Python cannot tell."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        raise SourceError(f"psana2 source: {what}: cannot tell which arguments {path} takes (a compiled method "
                          "does not say); name an attribute instead") from None
    needed = [p.name for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(needed) > 1 or any(p.kind == p.KEYWORD_ONLY and p.default is p.empty for p in parameters):
        raise SourceError(f"psana2 source: {what}: {path} needs the arguments {', '.join(needed)}; a path may call "
                          "methods with no argument or with the event only")
    return len(needed)


def _variable(run: Any, path: str, what: str, section: str, file: str) -> Any:
    """The scan or EPICS variable ``path`` of ``run``; SourceError listing the detectors and variables that exist."""
    try:
        return run.Detector(path)
    except KeyError:
        pass
    first = path.split(".")[0]
    missing = f"no detector or variable {path!r}" if first == path else f"no detector {first!r} (nor a variable {path!r})"
    raise SourceError(
        f"psana2 source: {file} has {missing} ({what}); its detectors: {', '.join(sorted(run.detnames))}; its scan "
        f"and EPICS variables: {', '.join(_environment_names(run)) or '(none)'}; fix {section} in the spec"
    ) from None


def _is_value(value: Any) -> bool:
    """Whether ``value`` is data (text, a number, an array or a list) rather than one of psana's objects."""
    return isinstance(value, (str, bytes, int, float, complex, list, tuple, np.ndarray, np.generic))


def _offered_at(run: Any, where: str, value: Any, part: str = "") -> str:
    """What ``value``, reached at path ``where``, offers: for the detector or one of its interfaces, the methods
    psana lists for it (``detector.interface.method``), else its entries or attributes (:func:`_names`); names
    that start with ``_`` too when ``part`` does."""
    if getattr(value, "_det_name", None) == where.split(".")[0]:
        offered = _offered(run, where.split(".")[0])
        own = [f"{where}.{name}" for name in _names(value, part) if name.startswith("_")]
        return offered + (f"; and psana's own: {', '.join(own)}" if own else "")
    return ", ".join(f"{where}.{name}" for name in _names(value, part)) or "(nothing)"


def _names(value: Any, part: str) -> list[str]:
    """What ``value`` offers: a mapping's keys, a list's item numbers, else its attribute names (public ones, and
    those that start with one ``_`` when ``part`` does)."""
    if isinstance(value, Mapping):
        return [str(key) for key in value]
    if isinstance(value, list | tuple | np.ndarray):
        return [str(number) for number in range(min(len(value), 16))] + (["..."] if len(value) > 16 else [])
    private = part.startswith("_")
    return [name for name in dir(value) if _psanas(value) and not name.startswith("__")
            and (private or not name.startswith("_"))]


def _offered(run: Any, detector: str) -> str:
    """What ``detector`` offers in ``run``, as ``detector.interface.method`` paths."""
    paths = [f"{name}.{interface}.{method}" for (name, interface), methods in sorted(run.detinfo.items())
             if name == detector for method in methods]
    return ", ".join(paths) or "(nothing)"


def _environment_names(run: Any) -> list[str]:
    """Scan and EPICS variable names of ``run``, sorted."""
    return sorted(run.scannames | {alias for alias, _ in run.epicsinfo})
