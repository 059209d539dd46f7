"""The stream spec: source → steps → serializer → sinks, validated, from YAML or JSON.

Each stage is chosen by its ``type:`` among the installed plugins (:mod:`beamstream.plugins`);
the model is assembled from them when first asked for, so a facility's plugin validates
exactly like a built-in one. Every model forbids unknown keys.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union, get_args

from pydantic import AfterValidator, BaseModel, Field, ValidationError, create_model

from beamstream.buffer.config import BufferConfig
from beamstream.description import describe_steps, metadata_from_spec
from beamstream.errors import MissingDependency, SpecError
from beamstream.plugins import plugin, plugin_names
from beamstream.spec_input import check_data_shape, exponent_hint, parse_yaml, read_spec_text
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
        problems = describe_errors(exc.errors(), data)
        lines = [f"{origin}: {len(problems)} problem(s) in the stream spec:", *(f"  {line}" for line in problems)]
        raise SpecError("\n".join(lines)) from None
    _check_fields(spec, origin)
    _check_description(spec, origin)
    _check_receivers(spec, origin)
    return spec


def receivers(spec: Any) -> int:
    """Over how many receivers ``spec``'s sinks spread its producers by rank (1: not spread)."""
    return max(sink.receivers for sink in spec.sinks)


def _check_receivers(spec: Any, origin: str) -> None:
    """SpecError if a sink spreads the producers over several receivers while another stream sink does not (its
    receiver would take the messages' ``receivers`` for its own and account for part of the stream only)."""
    spread = receivers(spec)
    others = [number for number, sink in enumerate(spec.sinks) if sink.type == "stream" and sink.receivers != spread]
    if spread > 1 and others:
        raise SpecError(f"{origin}: sinks[{others[0]}] (stream) sends to one endpoint while another stream sink "
                        f"spreads the producers over {spread}: list the same number of endpoints in both, or use "
                        "one stream sink")


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


def _check_description(spec: Any, origin: str) -> None:
    """SpecError from the first step that refuses the description as it reaches it (a ``pad`` value the field's
    dtype cannot hold), when the source spec alone describes its fields; the producer checks the same once read."""
    metadata = spec.source.described()
    if metadata is None:
        return
    if spec.metadata is not None:
        metadata = metadata.merged(metadata_from_spec(spec.metadata))
    try:
        describe_steps(spec.steps, metadata)
    except SpecError as exc:
        raise SpecError(f"{origin}: 1 problem(s) in the stream spec:\n  {exc}") from None


def load_spec(path: str | Path, for_service: bool = False) -> Any:
    """Read and validate a spec file (YAML, or JSON which is YAML too); its bytes are checked before they
    are parsed (:mod:`beamstream.spec_input`). With ``for_service``, as the request service checks a spec it
    is sent (:func:`as_the_service_runs_it`)."""
    path = Path(path)
    data = parse_yaml(read_spec_text(path), str(path))
    if for_service and isinstance(data, dict):
        return parse_service_spec(data, origin=str(path))
    return parse_spec(data, origin=str(path))


def parse_service_spec(data: Any, origin: str = "spec") -> Any:
    """``data`` (a spec sent to the request service) validated as the service runs it (:func:`as_the_service_runs_it`):
    SpecError as :func:`parse_spec` says, and for a sink that cannot carry the service's sealed stream."""
    spec = parse_spec(as_the_service_runs_it(data) if isinstance(data, dict) else data, origin)
    unsealable = [f"sinks[{number}] ({sink.type})" for number, sink in enumerate(spec.sinks) if not sink.sealable]
    if unsealable:
        raise SpecError(f"{origin}: {', '.join(unsealable)} cannot carry a sealed stream, and a request service seals "
                        "every stream it runs: read the stream with a beamstream client (its key comes with the "
                        "request's answer), or run that sink with `beamstream produce` outside the service")
    return spec


SERVICE_SINK_ENDPOINT = "tcp://buffer:1"  # stands for the stream's buffer, which binds once the stream starts


def as_the_service_runs_it(data: dict[str, Any], endpoint: str = SERVICE_SINK_ENDPOINT) -> dict[str, Any]:
    """``data`` (a spec meant for the request service, as parsed) as the service checks and runs it: its stream
    sinks replaced by one to the stream's buffer at ``endpoint`` (by default :data:`SERVICE_SINK_ENDPOINT`, until
    the buffer says where it listens), its other sinks kept; so its sinks may be left out (or null). Sinks that
    are neither a list nor null are left for validation to report."""
    sinks = data.get("sinks") or []
    if not isinstance(sinks, list):
        return data
    kept = [sink for sink in sinks if not (isinstance(sink, dict) and sink.get("type") == "stream")]
    return {**data, "sinks": [*kept, {"type": "stream", "endpoint": endpoint}]}


def with_buffer_endpoint(spec: Any, endpoint: str) -> Any:
    """``spec`` (a StreamSpec the service wrote for its producers) with its stream sink sent to ``endpoint``, where the
    buffer listens (:func:`as_the_service_runs_it`). Raises SpecError if ``endpoint`` is no endpoint."""
    return parse_spec(as_the_service_runs_it(json.loads(spec_to_json(spec)), endpoint),
                      origin=f"the spec with its stream sent to {endpoint!r}")


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
    """``loc`` written as a path in the spec: ``steps[2].constants``."""
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
                    models = _models_in(getattr(field, "annotation", None))
                    if len(models) != 1:
                        return None
                    model = models[0]
                return model
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation allows: itself if it is one, else the models among its union's members
    (``float | ConstantsFile | None`` → ConstantsFile)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [member for member in get_args(annotation) if isinstance(member, type) and issubclass(member, BaseModel)]


TYPE_MISMATCH = {  # pydantic's error types for "not that kind of value", and what that kind is called in a spec
    "float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
    "int_parsing": "a whole number", "int_from_float": "a whole number", "string_type": "text",
    "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "none_required": "null", "path_type": "a path", "literal_error": None, "enum": None,
}


def describe_errors(errors: list[Any], data: dict[str, Any]) -> list[str]:
    """One line per problem in pydantic's ``errors``, located as the spec writes it (:func:`readable_location`).

    Where a value may take several forms (``pedestal: 0.5`` or ``pedestal: {file: p.npy}``), pydantic reports
    a failure for each form; the lines say only what is wrong with the form the spec chose (the deepest
    failure), or, when it matches none, which forms are allowed."""
    located = [(readable_location(tuple(error["loc"]), data, error["type"]), error) for error in errors]
    mismatches: dict[tuple[Any, ...], list[Any]] = {}  # per location, the forms its value was not
    lines: list[str | tuple[Any, ...]] = []  # a line, or the location of mismatches said in one line, in order
    for loc, error in located:
        if error["type"] not in TYPE_MISMATCH:
            lines.append(describe_error(error, data, loc))
        elif not any(where[:len(loc)] == loc and (len(where) > len(loc) or other["type"] not in TYPE_MISMATCH)
                     for where, other in located):  # no other form got further
            if loc not in mismatches:
                lines.append(loc)
            mismatches.setdefault(loc, []).append(error)
    return [line if isinstance(line, str) else _mismatch(line, mismatches[line], data) for line in lines]


def _mismatch(loc: tuple[Any, ...], errors: list[Any], data: dict[str, Any]) -> str:
    """One line for the value at ``loc`` matching none of the forms it may take."""
    if len(errors) == 1:
        return describe_error(errors[0], data, loc)
    forms = []
    for error in errors:
        form = TYPE_MISMATCH[error["type"]] or error["msg"].removeprefix("Input should be ")
        if form == "a mapping" and len(models := _mapping_models(loc, data)) == 1:
            form = f"a mapping ({', '.join(models[0].model_fields)})"
        if form not in forms:
            forms.append(form)
    got = errors[0].get("input")
    return f"{_location(loc)}: expected {' or '.join(forms)}; got {_shown(got)}{exponent_hint(got)}"


def _mapping_models(loc: tuple[Any, ...], data: dict[str, Any]) -> list[type[BaseModel]]:
    """The models a spec location may hold, for naming their keys."""
    parent = _model_at(loc[:-1], data)
    field = parent.model_fields.get(loc[-1]) if parent is not None and loc and isinstance(loc[-1], str) else None
    return _models_in(getattr(field, "annotation", None))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_error(error: Any, data: dict[str, Any], readable: tuple[Any, ...] | None = None) -> str:
    """One line for one pydantic error: where (``readable``, the location as the spec writes it, by default
    worked out from the error), what is wrong, what to write instead."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx", {})
    if readable is None:
        readable = readable_location(loc, data, kind)
    if kind == "union_tag_invalid":
        expected = ctx["expected_tags"].replace("'", "")
        return f"{_location(readable)}.type: unknown {ctx['tag']!r}; expected one of: {expected}"
    if kind == "union_tag_not_found":
        plugin_kind = {"source": "sources", "serializer": "serializers"}.get(loc[0], loc[0])
        return f"{_location(readable)}.type: missing; expected one of: {', '.join(plugin_names(plugin_kind))}"
    if kind == "extra_forbidden":
        model = _model_at(readable[:-1], data)
        allowed = f"; allowed: {', '.join(k for k in model.model_fields if k != 'type')}" if model else ""
        return f"{_location(readable)}: unknown option{allowed}"
    hint = FOR_SERVICE_HINT if readable == ("sinks",) else ""
    if kind == "missing":
        return f"{_location(readable)}: required, not given{hint}"
    if kind == "path_type":
        return f"{_location(readable)}: expected a path; got {_shown(error.get('input'))}"
    if kind in TYPE_MISMATCH:
        hint += exponent_hint(error.get("input"))
    return f"{_location(readable)}: {error['msg'].removeprefix('Value error, ')}{hint}"


FOR_SERVICE_HINT = (" (a spec for the request service may leave its sinks out: check it with "
                    "`beamstream spec check --for-service`)")


def readable_location(loc: tuple[Any, ...], data: Any, kind: str = "") -> tuple[Any, ...]:
    """Pydantic's error location ``loc`` as a path in the spec ``data``: only the keys and list positions the spec
    has (and, for a ``missing`` error, the key it lacks). Pydantic's own segments go: the union member that failed
    (``float``, ``function-after[_check_format(), ConstantsFile]``), the plugin tag (``steps.0.batch.size`` →
    ``steps[0].size``), a dictionary's ``[key]``."""
    readable: list[Any] = []
    node = data
    for number, part in enumerate(loc):
        if isinstance(node, dict):
            present = part in node
        elif isinstance(node, list):
            present = isinstance(part, int) and 0 <= part < len(node)
        else:
            present = False
        if present:
            readable.append(part)
            node = node[part]
        elif kind == "missing" and number == len(loc) - 1 and isinstance(node, dict):
            readable.append(part)
    return tuple(readable)
