"""The JSON Schema of every message in :mod:`beamstream.wire`, generated from the definitions.

    python -m beamstream.wire.schema > docs/wire-format.schema.json

The messages travel as msgpack, not JSON; the schema describes the same maps (msgpack ``bin``
fields such as ``seq`` appear as base64 strings, as JSON has no bytes). Non-Python consumers
can validate or generate code from it. tests/test_wire_schema.py fails when the committed file
and these definitions differ.

Descriptions come from docstrings, and msgspec releases differ in how they indent them (0.23 dedents,
earlier ones kept the indentation); :func:`wire_schema` cleans every one with :func:`inspect.cleandoc`,
so the file depends on the definitions alone, not on which msgspec made it.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import msgspec

from beamstream.wire.control import Ack, Deliver, Describe, End, Error, Hello, Ping, Rejoin, Verdict
from beamstream.wire.messages import WIRE_VERSION, DataHeader, EndMessage
from beamstream.wire.metadata import FieldMetadata, RunMetadata
from beamstream.wire.slots import SlotRef

MESSAGES: dict[str, type[msgspec.Struct]] = {
    "DataHeader": DataHeader, "EndMessage": EndMessage,
    "Hello": Hello, "Ack": Ack, "Deliver": Deliver, "Describe": Describe, "End": End, "Ping": Ping, "Rejoin": Rejoin, "Error": Error,
    "Verdict": Verdict, "RunMetadata": RunMetadata, "FieldMetadata": FieldMetadata, "SlotRef": SlotRef,
}
"""Every message with a msgpack map of its own, by the name its schema has."""


def wire_schema() -> dict[str, Any]:
    """One JSON Schema document whose ``$defs`` hold every message of :data:`MESSAGES` and what they use."""
    _, components = msgspec.json.schema_components(list(MESSAGES.values()), ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"beamstream wire format, version {WIRE_VERSION}",
        "description": "Messages exchanged and stored by beamstream (docs/wire-format.md, docs/buffer-protocol.md). "
                       "Sent as msgpack maps; bytes fields appear here as base64 strings.",
        "$defs": _cleaned_docs(components),
    }


def _cleaned_docs(node: Any) -> Any:
    """``node`` with every ``title`` and ``description`` text cleaned as :func:`inspect.cleandoc` cleans docstrings."""
    if isinstance(node, dict):
        return {key: inspect.cleandoc(value) if key in ("title", "description") and isinstance(value, str)
                else _cleaned_docs(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_cleaned_docs(item) for item in node]
    return node


def schema_text() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(wire_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
