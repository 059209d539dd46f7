"""The wire format's three descriptions agree: the definitions in beamstream.wire, the JSON Schema file, the docs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from beamstream.wire import nats as layout
from beamstream.wire import replies, spill
from beamstream.wire.schema import MESSAGES, schema_text

DOCS = Path(__file__).parent.parent / "docs"
REGENERATE = "python -m beamstream.wire.schema > docs/wire-format.schema.json"


def fields_of(struct: type[msgspec.Struct]) -> set[str]:
    """The keys of a message's msgpack map (a tagged message's tag included)."""
    info = msgspec.inspect.type_info(struct)
    keys = {field.encode_name for field in info.fields}
    return keys | ({info.tag_field} if info.tag_field else set())


def tables(page: str) -> dict[str, list[list[str]]]:
    """The rows (cells) of every table preceded by ``<!-- wire: NAME -->`` in docs/``page``, by NAME."""
    found: dict[str, list[list[str]]] = {}
    name = None
    for line in (DOCS / page).read_text().splitlines():
        if (marker := re.fullmatch(r"<!-- wire: (\w+) -->", line.strip())):
            name = marker.group(1)
            found[name] = []
        elif name and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                found[name].append(cells)
        elif name and found[name]:
            name = None
    return found


def names(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", cell))


def test_schema_file_is_generated_from_the_definitions():
    committed = (DOCS / "wire-format.schema.json").read_text()
    assert committed == schema_text(), f"docs/wire-format.schema.json is stale: run `{REGENERATE}`"


@pytest.mark.parametrize("version", ["0.22.0", "0.23.0"])
def test_schema_is_the_same_whichever_msgspec_makes_it(version, tmp_path):
    """0.23 dedents docstrings where 0.22 kept their indentation; the generator's output must not change."""
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--only-binary", ":all:", "--target", str(tmp_path), f"msgspec=={version}"],
        capture_output=True, text=True, timeout=300)
    if pip.returncode:
        pytest.skip(f"pip could not fetch msgspec {version}: {pip.stderr.strip()[-300:]}")
    generate = ("import sys, msgspec; from beamstream.wire.schema import schema_text; "
                "assert msgspec.__version__ == sys.argv[1], msgspec.__version__; print(schema_text(), end='')")
    made = subprocess.run([sys.executable, "-c", generate, version], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert made.returncode == 0, made.stderr
    assert made.stdout == (DOCS / "wire-format.schema.json").read_text(), (
        f"msgspec {version} generates another schema than docs/wire-format.schema.json")


@pytest.mark.parametrize("message", ["DataHeader", "EndMessage", "RunMetadata", "FieldMetadata"])
def test_wire_format_doc_lists_every_header_key(message):
    rows = tables("wire-format.md")[message]
    documented = set().union(*(names(row[0]) for row in rows[1:]))
    assert documented == fields_of(MESSAGES[message]), (
        f"docs/wire-format.md's table for {message} and src/beamstream/wire/messages.py disagree")


def test_buffer_protocol_doc_lists_every_control_message_and_field():
    rows = tables("buffer-protocol.md")["control"][1:]
    documented = {names(op).pop(): names(fields) | {"op", "protocol"} for _, op, fields, _ in rows}
    defined = {msgspec.inspect.type_info(struct).tag: fields_of(struct)
               for name, struct in MESSAGES.items()
               if name not in ("DataHeader", "EndMessage", "Verdict", "RunMetadata", "FieldMetadata", "SlotRef")}
    assert documented == defined, "docs/buffer-protocol.md's control table and src/beamstream/wire/control.py disagree"


def test_nats_doc_names_every_header_and_the_verdict_fields():
    text = (DOCS / "nats-backend.md").read_text()
    headers = {layout.MSG, layout.FRAMES, layout.PARTS, layout.PART, layout.PART_SEQS, layout.MSG_ID, layout.PROOF,
               layout.POS}
    assert set(re.findall(r"`((?:Bs|Nats)-[A-Za-z-]+)`", text)) == headers
    verdict_row = next(line for line in text.splitlines() if "beamstream.NAME.verdict" in line)
    assert names(verdict_row) >= fields_of(MESSAGES["Verdict"])


def test_docs_name_the_replies_and_the_spill_magic():
    wire_doc = (DOCS / "wire-format.md").read_text()
    for reply in (replies.ACK, replies.KEPT.strip(), replies.REFUSED.strip(), replies.RELEASED.strip()):
        assert reply.decode() in wire_doc
    assert spill.MAGIC.decode() in (spill.__doc__ or "") and spill.INDEX_MAGIC.decode() in (spill.__doc__ or "")


def test_the_drift_check_notices_a_missing_key(tmp_path, monkeypatch):
    page = (DOCS / "wire-format.md").read_text().replace("| `sent` |", "| `sent_at` |")
    (tmp_path / "wire-format.md").write_text(page)
    monkeypatch.setattr(__import__(__name__), "DOCS", tmp_path)
    rows = tables("wire-format.md")["DataHeader"]
    assert set().union(*(names(row[0]) for row in rows[1:])) != fields_of(MESSAGES["DataHeader"])
