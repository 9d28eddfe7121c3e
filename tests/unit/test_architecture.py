"""The layout's rules (docs/architecture.md), checked on the source: no import cycles, no other package's
private names, Ray only in the Serve shells and the benchmark machinery, nothing serving imports the demo."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "config",
    "experts",
    "router",
    "gateway",
    "autoscaling",
    "deployments",
    "observability",
    "cli",
    "demo",
    "bench",
]
RAY_ALLOWED = {"deployments", "bench"}
SERVING = {"config", "experts", "router", "gateway", "autoscaling", "deployments", "observability"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out["loraplex." + ".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def _package(module: str) -> str:
    return module.split(".")[1]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        deps = set()
        for target, names in _imports(path):
            for name in names or [None]:
                full = f"{target}.{name}" if name else target
                dep = full if full in MODULES else target
                if dep in MODULES and dep != mod:
                    deps.add(dep)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_list_covers_every_python_folder():
    folders = {p.parent.relative_to(ROOT).parts[0] for p in ROOT.glob("*/__init__.py")}
    assert folders == set(PACKAGES)


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_imports_of_another_packages_private_names():
    bad = [
        f"{mod} imports {target}.{name}"
        for mod, path in MODULES.items()
        for target, names in _imports(path)
        if target.startswith("loraplex.") and _package(target) != _package(mod)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert bad == []


def test_ray_only_in_the_serve_shells_and_the_benchmarks():
    bad = [
        f"{mod} imports {target}"
        for mod, path in MODULES.items()
        if _package(mod) not in RAY_ALLOWED
        for target, _ in _imports(path)
        if target == "ray" or target.startswith("ray.")
    ]
    assert bad == []


def test_serving_code_never_imports_the_demo_or_the_benchmarks():
    bad = [
        f"{mod} imports {target}"
        for mod, path in MODULES.items()
        if _package(mod) in SERVING
        for target, _ in _imports(path)
        if target.startswith(("loraplex.demo", "loraplex.bench"))
    ]
    assert bad == []


def test_router_is_routing_only():
    allowed = {"router", "config", "experts"}  # experts: typed errors only
    bad = [
        f"{mod} imports {target}"
        for mod, path in MODULES.items()
        if _package(mod) == "router"
        for target, _ in _imports(path)
        if target.startswith("loraplex.") and _package(target) not in allowed
    ]
    bad += [
        f"{mod} imports {target}"
        for mod, path in MODULES.items()
        if _package(mod) == "router"
        for target, _ in _imports(path)
        if target.startswith("loraplex.experts") and target != "loraplex.experts.errors"
    ]
    assert bad == []


def test_no_bare_top_level_imports_of_project_folders():
    """Everything imports through `loraplex.`; a bare `import experts` would load a second copy of the module."""
    files = list(MODULES.values()) + list((ROOT / "scripts").glob("*.py")) + list((ROOT / "tests").rglob("*.py"))
    bad = [
        f"{p.relative_to(ROOT)} imports {target}"
        for p in files
        for target, _ in _imports(p)
        if target.split(".")[0] in PACKAGES
    ]
    assert bad == []
