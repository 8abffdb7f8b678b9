"""The package's shape: every module imports only its own stage or the stages before it, and no import
forms a circle. Read with ``ast``, so imports inside functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "normfree_bench"
# The data flow, from the command line's inputs to the report; a stage imports only itself and earlier ones.
STAGES = ("_env", "errors", "io", "_legacy", "config", "core", "models", "__init__", "data", "training", "store",
          "sweep", "tables", "analysis", "report", "tools", "cli", "__main__")
RANK = {"_env": 0, "errors": 0, "io": 0, "_legacy": 0, **{s: i for i, s in enumerate(STAGES) if i > 3}}


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def stage(module: str) -> str:
    return module.split(".")[0]


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports ("" is the package root)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "normfree_bench":
                found.add("")
            elif name.startswith("normfree_bench."):
                rel = name.removeprefix("normfree_bench.")
                while rel and rel not in modules:  # `from pkg.mod import func`: the module is pkg.mod
                    rel = rel.rpartition(".")[0]
                if rel:
                    found.add(rel)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        edges = imports_of(path, modules)
        if name != "__main__":
            edges.discard("")  # `from normfree_bench import x` where x is a submodule was resolved above
        graph[name] = edges - {name}
    return graph


GRAPH = import_graph()


def test_every_module_is_in_a_stage() -> None:
    assert {stage(m) for m in GRAPH} <= set(RANK), sorted({stage(m) for m in GRAPH} - set(RANK))


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_follow_the_data_flow(module: str) -> None:
    late = sorted(t for t in GRAPH[module] if RANK[stage(t) or "__init__"] > RANK[stage(module)])
    assert not late, f"{module} (stage {stage(module)}) imports later stages: {late}"


def test_package_modules_never_import_the_package_root() -> None:
    modules = module_names()
    offenders = [m for m, path in modules.items() if m not in ("__init__", "__main__")
                 and any(isinstance(n, ast.ImportFrom) and n.module == "normfree_bench"
                         and any(f"{a.name}" not in modules for a in n.names)
                         for n in ast.walk(ast.parse(path.read_text())))]
    assert not offenders, offenders


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circles() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_circle_check_finds_a_planted_circle() -> None:
    planted = {k: set(v) for k, v in GRAPH.items()}
    planted["core.baseline"].add("models.transformer")  # models.transformer imports core.baseline
    assert find_cycle(planted) is not None


def test_no_folder_holds_more_than_ten_modules() -> None:
    for folder in [PACKAGE, *(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 10, (folder.name, len(modules))


def test_every_subpackage_is_listed_for_installation() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"normfree_bench"} | {f"normfree_bench.{p.name}" for p in PACKAGE.iterdir()
                                    if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= listed, sorted(folders - listed)
