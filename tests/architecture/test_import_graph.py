"""The SDK's import graph, read from the source (every import: module level, in functions, under
TYPE_CHECKING), has no cycle, and the layers keep their direction: configuration at the bottom, the
site runtime never importing the server's parts. A function-level import may defer a heavy library;
it may not hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ai4hi_sdk"


def _modules() -> dict[str, Path]:
    """Every SDK module: its .py files, and compiled extensions by their C source (they import nothing)."""
    out = {}
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.c")]:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The SDK module an imported dotted name belongs to (a module, or the module defining a name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    if path.suffix == ".c":
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" depends on the submodule; "from mod import name" on mod
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for name in names:
            if name.startswith("ai4hi_sdk"):
                owner = _owner(name)
                if owner and owner != module:
                    found.add(owner)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_hidden_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_imports_count():
    # trainers.site_trainer imports trainers.local_round only inside SiteTrainer.fit
    assert "ai4hi_sdk.trainers.local_round" in GRAPH["ai4hi_sdk.trainers.site_trainer"]


def test_the_sdk_has_no_import_cycle():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("layer,forbidden", [
    ("ai4hi_sdk.site", ("ai4hi_sdk.jobs.components", "ai4hi_sdk.jobs.builder", "ai4hi_sdk.jobs.simulate",
                        "ai4hi_sdk.cli", "ai4hi_sdk.deploy")),
    ("ai4hi_sdk.trainers", ("ai4hi_sdk.site", "ai4hi_sdk.jobs", "ai4hi_sdk.cli", "nvflare")),
    ("ai4hi_sdk.privacy", ("ai4hi_sdk.site", "ai4hi_sdk.jobs", "ai4hi_sdk.trainers", "ai4hi_sdk.cli")),
    ("ai4hi_sdk.audit", ("ai4hi_sdk.site", "ai4hi_sdk.jobs", "ai4hi_sdk.privacy", "ai4hi_sdk.trainers")),
])
def test_layers_keep_their_direction(layer, forbidden):
    # jobs.wire is the shared vocabulary (constants, imports nothing): every layer may use it
    wrong = {m: sorted(d for d in deps if d.startswith(forbidden) and d != "ai4hi_sdk.jobs.wire")
             for m, deps in GRAPH.items() if m.startswith(layer)}
    assert {m: d for m, d in wrong.items() if d} == {}


#: what configuration (the bottom layer) may import of the SDK: itself and the error types
CONFIG_MAY_IMPORT = ("ai4hi_sdk.config", "ai4hi_sdk.errors")


def config_violations(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Configuration modules importing another SDK package (function-level imports count: the graph
    holds every import of a module), with what they import."""
    wrong = {m: sorted(d for d in deps if not any(d == p or d.startswith(p + ".") for p in CONFIG_MAY_IMPORT))
             for m, deps in graph.items() if m == "ai4hi_sdk.config" or m.startswith("ai4hi_sdk.config.")}
    return {m: d for m, d in wrong.items() if d}


def test_config_violations_names_a_hidden_import():
    # e.g. the job spec building the secure-aggregation protocol's config inside a method
    hidden = {"ai4hi_sdk.config.job_spec": {"ai4hi_sdk.config.loader", "ai4hi_sdk.privacy.secagg.protocol.config"},
              "ai4hi_sdk.config.loader": {"ai4hi_sdk.errors"}}
    assert config_violations(hidden) == {"ai4hi_sdk.config.job_spec": ["ai4hi_sdk.privacy.secagg.protocol.config"]}


def test_configuration_imports_nothing_else_of_the_sdk():
    """Every layer reads the schemas, so the schemas import no layer: not at module level, not in a
    function (a function-level import hides the dependency from a reader, not from this test)."""
    assert config_violations(GRAPH) == {}
