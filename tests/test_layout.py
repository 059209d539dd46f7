"""The shape of the package: no import cycles, a light client, the clients and the service apart (what both speak
below both), short modules, spec and runtime names kept apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


import beamstream

ROOT = Path(beamstream.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The beamstream modules ``path`` imports at run time (in functions too; not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    skipped = {id(child) for node in ast.walk(tree) if isinstance(node, ast.If) and is_type_checking(node)
               for stmt in node.body for child in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in ROOT.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first = last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_among_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_import_cycles_among_packages():
    """Folding every module into its top-level part (beamstream.buffer, beamstream.client, beamstream.wire, …),
    no part imports one that imports it back: no package imports its consumer."""
    folded: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        part = ".".join(name.split(".")[:2])
        folded.setdefault(part, set()).update(".".join(t.split(".")[:2]) for t in targets)
    for part, targets in folded.items():
        targets.discard(part)
    folded.pop("beamstream", None)  # the package root re-exports the client, nothing imports it
    cycle = find_cycle(folded)
    assert cycle is None, "packages import each other: " + " → ".join(cycle)


def test_finds_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_client_imports_no_pydantic_nats_or_buffer():
    code = ("import sys, beamstream.client; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'nats', 'h5py', 'psana', 'torch', 'mpi4py', 'typer') "
            "or m.startswith(('beamstream.buffer', 'beamstream.jetstream', 'beamstream.spec'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_spec_models_and_the_runtime_objects_they_build_are_named_apart():
    """A spec model is named for what it describes plus its kind (``StreamSink``); what it builds is named
    for what it does (``StreamSender``), never like a spec."""
    from typing import get_type_hints

    from beamstream.errors import MissingDependency
    from beamstream.plugins import plugin, plugin_names

    builders = {"sources": ("Source", "open"), "steps": ("Step", "build"), "serializers": ("Serializer", "build"),
                "sinks": ("Sink", "open")}
    checked = 0
    for kind, (suffix, method) in builders.items():
        for name in plugin_names(kind):
            try:
                model = plugin(kind, name)
            except MissingDependency:
                continue
            built = get_type_hints(getattr(model, method))["return"]
            assert model.__name__.endswith(suffix), f"{model.__name__} (a {kind[:-1]} spec) should end in {suffix}"
            assert not built.__name__.endswith((suffix, "Spec", "Config")), (
                f"{model.__name__}.{method}() builds {built.__name__}: name runtime objects for what they do")
            checked += 1
    assert checked >= 10


CLIENT_SIDE = ("beamstream.client", "beamstream.service_client", "beamstream.remote", "beamstream.remote_cli",
               "beamstream.streams_cli", "beamstream.profile")  # the data-plane client, the service's client (old name too), its CLI, profile
SERVICE_MAY_USE_OF_THE_BUFFER = {"beamstream.buffer.config"}  # BufferConfig: the API's Resources.buffer
MAX_MODULE_LINES = 420  # ~400: a module a newcomer reads in one sitting


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(f"{package}.") for package in packages)


def test_the_clients_import_nothing_of_the_service():
    """What the clients and the service both speak (states, API models, relay framing, TLS context, profile) is
    below both (beamstream.protocol, beamstream.wire, beamstream.security, beamstream.profile)."""
    graph = import_graph()
    found = {name: sorted(target for target in targets if within(target, ("beamstream.service",)))
             for name, targets in graph.items() if within(name, CLIENT_SIDE)}
    assert len(found) >= 10, sorted(found)  # the modules were found
    assert {name: targets for name, targets in found.items() if targets} == {}


def test_the_service_imports_no_client_and_no_buffer_internals():
    graph = import_graph()
    found = {name: sorted(target for target in targets
                          if within(target, (*CLIENT_SIDE, "beamstream.buffer"))
                          and target not in SERVICE_MAY_USE_OF_THE_BUFFER)
             for name, targets in graph.items() if within(name, ("beamstream.service",))}
    assert len(found) >= 10, sorted(found)
    assert {name: targets for name, targets in found.items() if targets} == {}


def test_the_consumer_apps_are_above_the_client_and_never_import_the_service():
    """beamstream.viewer, bridges and apps read streams as any consumer does (beamstream.client); the service uses
    the viewer for its pages' live view (a lossy group member per stream), so the viewer must not need it back."""
    graph = import_graph()
    apps = ("beamstream.viewer", "beamstream.bridges", "beamstream.apps", "beamstream.torch")
    found = {name: sorted(target for target in targets if within(target, ("beamstream.service",)))
             for name, targets in graph.items() if within(name, apps)}
    assert len(found) >= 8, sorted(found)
    assert {name: targets for name, targets in found.items() if targets} == {}
    service_uses = {target for name, targets in graph.items() if within(name, ("beamstream.service",))
                    for target in targets if within(target, apps)}
    assert service_uses <= {"beamstream.viewer.app", "beamstream.viewer.watch", "beamstream.viewer.latest",
                            "beamstream.viewer.frames", "beamstream.viewer"}, service_uses


def test_the_layout_tests_see_a_forbidden_import():
    assert within("beamstream.service.app", ("beamstream.service",))
    assert not within("beamstream.service_client.client", ("beamstream.service",))
    assert within("beamstream.service_client", CLIENT_SIDE) and not within("beamstream.services", CLIENT_SIDE)


def test_every_module_is_at_most_420_lines():
    lengths = {str(path.relative_to(ROOT.parent)): len(path.read_text().splitlines()) for path in ROOT.rglob("*.py")}
    assert {path: lines for path, lines in sorted(lengths.items()) if lines > MAX_MODULE_LINES} == {}
