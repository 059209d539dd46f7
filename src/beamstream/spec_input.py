"""Reading a stream spec from a file or the network without trusting it: bounded, UTF-8, plain YAML.

A spec arrives from a person's file or over the network, so before any model sees it:

- a file must be a regular file (not a FIFO, device or directory) of at most :data:`MAX_SPEC_BYTES`;
- its text must be UTF-8;
- its YAML may nest at most :data:`MAX_DEPTH` levels, hold at most :data:`MAX_NODES` values,
  use no aliases (``*name``: they let a small file expand into a huge one) and no integer
  longer than :data:`MAX_INT_DIGITS` digits;
- already parsed data (JSON from the API) is held to the same depth and size.

Every refusal is a SpecError naming the file and what to change. PyYAML (YAML 1.1) reads a number written
with an exponent but no dot (``75e-6``) as text; where a spec's number is such a text, the error says so and
gives the number with a dot (:func:`exponent_hint`).
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from beamstream.errors import SpecError

MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_INT_DIGITS = 30
EXPONENT_WITHOUT_DOT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")
"""A number PyYAML reads as text: an exponent and no dot (``75e-6``; ``7.5e-6`` and ``75.e-6`` are numbers)."""


def read_spec_text(path: Path) -> str:
    """The text of spec file ``path``; SpecError if it is missing, not a regular file, too big or not UTF-8."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a device or socket")
        raise SpecError(f"{path}: is {kind}, not a spec file; give the path of a YAML or JSON file")
    if info.st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {info.st_size:,} bytes; a spec has at most {MAX_SPEC_BYTES:,}")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: more than {MAX_SPEC_BYTES:,} bytes; a spec has at most {MAX_SPEC_BYTES:,}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start} is {raw[exc.start:exc.start + 1]!r}); "
                        "save the spec as UTF-8") from None


class _DuplicateKey(ValueError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (which would otherwise keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool, type(None))) and key in seen:
                raise _DuplicateKey(f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, origin: str) -> Any:
    """The data in YAML (or JSON) ``text``, after checking its shape event by event (no recursion, no aliases)."""
    try:
        depth = nodes = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise SpecError(f"{origin}: YAML alias *{event.anchor} at line {event.start_mark.line + 1}: "
                                "aliases are not allowed in specs; write the value out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(f"{origin}: nested deeper than {MAX_DEPTH} levels at line "
                                    f"{event.start_mark.line + 1}")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    raise SpecError(f"{origin}: more than {MAX_NODES:,} values; a spec is smaller")
                if len(event.value) > MAX_INT_DIGITS and event.value.lstrip("+-").isdigit() and event.implicit[0]:
                    raise SpecError(f"{origin}: a number of {len(event.value)} digits at line "
                                    f"{event.start_mark.line + 1}; numbers in a spec have at most {MAX_INT_DIGITS}")
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except SpecError:
        raise
    except _DuplicateKey as exc:
        raise SpecError(f"{origin}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(f"{origin}: not valid YAML at {where}: {exc.problem}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise SpecError(f"{origin}: cannot be read as YAML: {exc}") from None


def check_data_shape(data: Any, origin: str) -> None:
    """SpecError if parsed data nests deeper than :data:`MAX_DEPTH` or holds more than :data:`MAX_NODES`
    values (for JSON that did not come through :func:`parse_yaml`); walks without recursion."""
    pending = [(data, 1)]
    nodes = 0
    while pending:
        value, depth = pending.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise SpecError(f"{origin}: more than {MAX_NODES:,} values; a spec is smaller")
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise SpecError(f"{origin}: nested deeper than {MAX_DEPTH} levels")
            children = value.values() if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**MAX_INT_DIGITS:
            raise SpecError(f"{origin}: a number of more than {MAX_INT_DIGITS} digits; numbers in a spec are smaller")


def exponent_hint(value: Any) -> str:
    """For ``value``, a text PyYAML read from a number with an exponent and no dot (:data:`EXPONENT_WITHOUT_DOT`),
    `` (YAML read 75e-6 as text: ... write 7.5e-05)``, to add to an error that wanted a number; else ``""``."""
    if not isinstance(value, str) or not EXPONENT_WITHOUT_DOT.fullmatch(text := value.strip()):
        return ""
    number = float(text)
    written = (str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)
               if math.isfinite(number) else re.sub("([eE])", r".0\1", text))
    return f" (YAML read {text} as text: PyYAML reads a number with an exponent only with a dot; write {written})"


def texts_read_from_numbers(data: Any, texts: frozenset[str] = frozenset()) -> list[str]:
    """``location: 'text' (YAML read ...)`` for each text in ``data`` (parsed YAML) that PyYAML read from a number
    with an exponent and no dot (:func:`exponent_hint`), outside the keys named in ``texts`` (those hold text)."""
    found, pending = [], [("", data)]
    while pending:
        location, value = pending.pop(0)
        if isinstance(value, dict):
            pending += [(f"{location}.{key}".lstrip("."), item) for key, item in value.items() if key not in texts]
        elif isinstance(value, list):
            pending += [(f"{location}[{index}]", item) for index, item in enumerate(value)]
        elif hint := exponent_hint(value):
            found.append(f"{location}: {value!r}{hint}")
    return found
