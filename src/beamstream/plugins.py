"""Plugin registry: sources, steps, serializers and sinks found through entry points.

A facility adds its own plugin without forking beamstream by declaring, in its package::

    [project.entry-points."beamstream.steps"]
    mystep = "mypackage.steps:MyStepSpec"

where ``MyStepSpec`` subclasses :class:`beamstream.stages.StepSpec` and has
``type: Literal["mystep"]``. A serializer also registers the codec that decodes its messages
under ``beamstream.codecs`` (see :mod:`beamstream.codecs`). Specs arrive over the network, so they only ever name
plugins by these registered names, never by import path.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from beamstream.errors import MissingDependency, SpecError
from beamstream.stages import SerializerSpec, SinkSpec, SourceSpec, SpecModel, StepSpec

KINDS: dict[str, type[SpecModel]] = {
    "sources": SourceSpec,
    "steps": StepSpec,
    "serializers": SerializerSpec,
    "sinks": SinkSpec,
}


@cache
def _registered(kind: str) -> tuple[EntryPoint, ...]:
    """The entry points of ``kind``, read once per process (each reading scans every installed package)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of: {', '.join(KINDS)}")
    return tuple(entry_points(group=f"beamstream.{kind}"))


def plugin_names(kind: str) -> tuple[str, ...]:
    """Names registered for ``kind`` (one of :data:`KINDS`), sorted."""
    return tuple(sorted({ep.name for ep in _registered(kind)}))


@cache
def plugin(kind: str, name: str) -> type[SpecModel]:
    """The spec model class registered as ``name`` for ``kind``.

    Raises SpecError listing the installed names on a miss, MissingDependency when the
    plugin's module needs a package that is not installed.
    """
    matches = [ep for ep in _registered(kind) if ep.name == name]
    if not matches:
        known = ", ".join(plugin_names(kind)) or "(none installed)"
        raise SpecError(f"unknown {kind[:-1]} type {name!r}; expected one of: {known}")
    try:
        model = matches[0].load()
    except ImportError as exc:
        raise MissingDependency(
            f"the {kind[:-1]} {name!r} could not be loaded: {exc}; "
            f"install the package that provides it ({matches[0].value})"
        ) from exc
    if not (isinstance(model, type) and issubclass(model, KINDS[kind])):
        raise SpecError(f"entry point beamstream.{kind}:{name} is not a {KINDS[kind].__name__}")
    return model


def installed_plugins() -> dict[str, list[str]]:
    """Every registered plugin name by kind, for `beamstream plugins` and the API."""
    return {kind: list(plugin_names(kind)) for kind in KINDS}
