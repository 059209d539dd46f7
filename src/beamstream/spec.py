"""The stream spec: source → steps → serializer → sinks, validated, from YAML or JSON.

Each stage is chosen by its ``type:`` among the installed plugins (:mod:`beamstream.plugins`);
the model is assembled from them when first asked for, so a facility's plugin validates
exactly like a built-in one. Every model forbids unknown keys.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, Field, ValidationError, create_model

from beamstream.buffer.config import BufferConfig
from beamstream.description import metadata_from_spec
from beamstream.errors import MissingDependency, SpecError
from beamstream.plugins import plugin, plugin_names
from beamstream.spec_input import check_data_shape, parse_yaml, read_spec_text
from beamstream.stages import SerializerSpec, SinkSpec, SourceSpec, SpecModel, StepSpec

SPEC_DOC = """A stream: where events come from, how they are processed, encoded and delivered.

Attributes:
    name: a label for logs and the service (optional).
    source: where events come from (``type`` picks the plugin).
    steps: processing steps applied in order; without a ``batch`` step every event is its own message.
    serializer: how a message's arrays are encoded (default ``arrays``).
    sinks: where messages go (at least one).
    buffer: the buffer between producers and consumer groups, for the service that runs the
        stream to start (``beamstream buffer --spec``); the stream sinks connect to its ``producers``.
    metadata: entries of the stream's description to add or override (facility, instrument,
        experiment, run, sample, constants ``{name: {value, unit}}``, fields ``{name: {pixel_size,
        distance, ...}}``; see ``RunMetadata`` in docs/wire-format.md).
"""


def _union(kind: str) -> Any:
    models = []
    for name in plugin_names(kind):
        try:
            models.append(plugin(kind, name))
        except MissingDependency:
            continue  # reported with its install hint when a spec asks for it
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007


@cache
def spec_model() -> type[SpecModel]:
    """The StreamSpec model built from the installed plugins."""
    return create_model(
        "StreamSpec",
        __base__=SpecModel,
        __doc__=SPEC_DOC,
        name=(str | None, Field(None, description="a label for logs and the service")),
        source=(_union("sources"), Field(description="where events come from")),
        steps=(list[_union("steps")], Field(default_factory=list, description="processing steps, in order")),
        serializer=(
            _union("serializers"),
            Field(default_factory=lambda: plugin("serializers", "arrays")(type="arrays"), description="message encoding"),
        ),
        sinks=(list[_union("sinks")], Field(min_length=1, description="where messages go")),
        buffer=(BufferConfig | None, Field(None, description="the buffer between producers and consumer groups")),
        metadata=(Annotated[dict[str, Any] | None, AfterValidator(_check_metadata)],
                  Field(None, description="entries of the stream's description to add or override")),
    )


def _check_metadata(section: dict[str, Any] | None) -> dict[str, Any] | None:
    if section is not None:
        metadata_from_spec(section)
    return section


class StreamSpecView:
    """Typing aid: the attributes every StreamSpec instance has."""

    name: str | None
    source: SourceSpec
    steps: list[StepSpec]
    serializer: SerializerSpec
    sinks: list[SinkSpec]
    buffer: BufferConfig | None
    metadata: dict[str, Any] | None


def parse_spec(data: Any, origin: str = "spec") -> Any:
    """Validate ``data`` (a dict, as parsed from YAML/JSON) into a StreamSpec.

    Raises SpecError whose message lists every problem as ``location: what is wrong``.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping with keys source, steps, serializer, sinks; got {type(data).__name__}")
    check_data_shape(data, origin)
    _raise_missing_plugins(data, origin)
    try:
        spec = spec_model().model_validate(data)
    except ValidationError as exc:
        lines = [f"{origin}: {len(exc.errors())} problem(s) in the stream spec:"]
        lines += [f"  {describe_error(error, data)}" for error in exc.errors()]
        raise SpecError("\n".join(lines)) from None
    _check_fields(spec, origin)
    return spec


def _check_fields(spec: Any, origin: str) -> None:
    """SpecError naming every step that reads a field the batches will not have at that step (when the
    source says which fields it produces), so that the mistake shows at `spec check`, not at run time."""
    names = spec.source.field_names()
    if names is None:
        return
    problems = []
    for number, step in enumerate(spec.steps):
        for field in step.fields_needed():
            if field not in names:
                problems.append(f"  steps[{number}] ({step.type}): field {field!r} is not there; "
                                f"the batches have: {', '.join(sorted(names))}")
        names = step.fields_after(names)
    if problems:
        raise SpecError("\n".join([f"{origin}: {len(problems)} problem(s) in the stream spec:", *problems]))


def load_spec(path: str | Path, for_service: bool = False) -> Any:
    """Read and validate a spec file (YAML, or JSON which is YAML too); its bytes are checked before they
    are parsed (:mod:`beamstream.spec_input`). With ``for_service``, as the request service checks a spec it
    is sent (:func:`as_the_service_runs_it`)."""
    path = Path(path)
    data = parse_yaml(read_spec_text(path), str(path))
    if for_service and isinstance(data, dict):
        data = as_the_service_runs_it(data)
    return parse_spec(data, origin=str(path))


SERVICE_SINK_ENDPOINT = "tcp://buffer:1"  # stands for the stream's buffer, which binds once the stream starts


def as_the_service_runs_it(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a spec meant for the request service, as parsed) as the service checks and runs it: its stream
    sinks replaced by one to the stream's buffer (here :data:`SERVICE_SINK_ENDPOINT`), its other sinks kept; so
    its sinks may be left out. Sinks that are not a list are left for validation to report."""
    sinks = data.get("sinks", [])
    if not isinstance(sinks, list):
        return data
    kept = [sink for sink in sinks if not (isinstance(sink, dict) and sink.get("type") == "stream")]
    return {**data, "sinks": [*kept, {"type": "stream", "endpoint": SERVICE_SINK_ENDPOINT}]}


def spec_to_json(spec: BaseModel) -> str:
    """The spec as JSON, as handed to workers and stored with jobs."""
    return spec.model_dump_json()


def spec_from_json(text: str) -> Any:
    """Inverse of :func:`spec_to_json`."""
    return parse_spec(json.loads(text), origin="spec (JSON)")


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of StreamSpec for the installed plugins."""
    return spec_model().model_json_schema()


def _stage_entries(data: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(location, plugin kind, raw value) of every stage in a raw spec."""
    entries = [("source", "sources", data.get("source")), ("serializer", "serializers", data.get("serializer"))]
    for key, kind in (("steps", "steps"), ("sinks", "sinks")):
        values = data.get(key)
        if isinstance(values, list):
            entries += [(f"{key}[{index}]", kind, value) for index, value in enumerate(values)]
    return entries


def _raise_missing_plugins(data: dict[str, Any], origin: str) -> None:
    for where, kind, value in _stage_entries(data):
        if isinstance(value, dict) and isinstance(value.get("type"), str) and value["type"] in plugin_names(kind):
            try:
                plugin(kind, value["type"])
            except MissingDependency as exc:
                raise SpecError(f"{origin}: {where}.type: {exc}") from None


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _model_at(loc: tuple[Any, ...], data: dict[str, Any]) -> type[BaseModel] | None:
    """The spec model a location points into, for listing its allowed keys."""
    if not loc:
        return spec_model()
    if loc == ("buffer",):
        return BufferConfig
    for where, kind, value in _stage_entries(data):
        stage_loc = where.replace("[", ".").replace("]", "").split(".")
        if [str(part) for part in loc[: len(stage_loc)]] == stage_loc and isinstance(value, dict):
            if value.get("type") in plugin_names(kind):
                model: Any = plugin(kind, value["type"])
                for part in loc[len(stage_loc) :]:
                    field = model.model_fields.get(part) if isinstance(part, str) else None
                    annotation = getattr(field, "annotation", None)
                    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                        return None
                    model = annotation
                return model
    return None


def describe_error(error: Any, data: dict[str, Any]) -> str:
    """One line for one pydantic error: where, what is wrong, what to write instead."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "union_tag_invalid":
        expected = ctx["expected_tags"].replace("'", "")
        return f"{_location(loc)}.type: unknown {ctx['tag']!r}; expected one of: {expected}"
    if kind == "union_tag_not_found":
        plugin_kind = {"source": "sources", "serializer": "serializers"}.get(loc[0], loc[0])
        return f"{_location(loc)}.type: missing; expected one of: {', '.join(plugin_names(plugin_kind))}"
    # pydantic puts the union tag in the location (steps.0.batch.size): drop it for readers
    readable = _drop_tags(loc, data)
    if kind == "extra_forbidden":
        model = _model_at(readable[:-1], data)
        allowed = f"; allowed: {', '.join(k for k in model.model_fields if k != 'type')}" if model else ""
        return f"{_location(readable)}: unknown option{allowed}"
    hint = FOR_SERVICE_HINT if readable == ("sinks",) else ""
    if kind == "missing":
        return f"{_location(readable)}: required, not given{hint}"
    return f"{_location(readable)}: {error['msg'].removeprefix('Value error, ')}{hint}"


FOR_SERVICE_HINT = (" (a spec for the request service may leave its sinks out: check it with "
                    "`beamstream spec check --for-service`)")


def _drop_tags(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """``loc`` without the union tags pydantic inserts (``steps.0.batch.size`` → ``steps.0.size``)."""
    readable: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and part in (node.get("type"), node.get("kind")):
            continue
        readable.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(readable)
