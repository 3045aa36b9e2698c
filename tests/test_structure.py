"""The source tree's structure: no import cycles, imports at the top of modules, family names in the registry alone.

These read ``src/`` with ``ast`` (nothing is imported), so they run in milliseconds and fail on the line that
breaks the rule.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# imported inside the function that needs them, on purpose: packages that may be missing or broken on a machine
# (an extra, or torch-fidelity, whose torchvision does not import beside this torch), and readline (not on Windows)
OPTIONAL = ("bitsandbytes", "xformers", "deepspeed", "torchvision", "torch_fidelity", "torchmetrics.image.fid",
            "torchmetrics.image.kid", "readline", "flash_attn", "trl")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imported_modules(node: ast.AST, importer: str) -> list[str]:
    """The ``src`` modules an import statement runs: the module named and every package above it."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            package = importer.split(".")[:-node.level] if not MODULES[importer].name == "__init__.py" else \
                importer.split(".")[:len(importer.split(".")) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    found = []
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing src.a.b runs src/__init__, src/a/__init__, src/a/b
            if ".".join(parts[:i]) in MODULES:
                found.append(".".join(parts[:i]))
    return [m for m in found if m != importer]


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for m in imported_modules(node, name)}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (each holds a cycle)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through a component's first module, for the failure message."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def test_src_has_no_import_cycle_counting_imports_inside_functions():
    graph = import_graph()
    cycles = [" -> ".join(a_cycle(graph, c)) for c in strongly_connected(graph)]
    assert not cycles, "import cycles in src/:\n" + "\n".join(cycles)


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import():
    graph = {"src.a": {"src.b"}, "src.b": {"src.c"}, "src.c": {"src.a"}, "src.d": {"src.a"}}
    assert strongly_connected(graph) == [["src.a", "src.b", "src.c"]]
    assert a_cycle(graph, ["src.a", "src.b", "src.c"]) == ["src.a", "src.b", "src.c", "src.a"]


def function_level_imports() -> list[str]:
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    target = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    if not (target or "").startswith(OPTIONAL):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target} in {func.name}()")
    return sorted(set(found))


def test_imports_are_at_the_top_of_modules_except_optional_dependencies():
    assert function_level_imports() == []


def string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_family_names_are_written_in_the_family_registry_alone():
    from src.families.registry import FAMILIES

    names = set(FAMILIES.names())
    assert {"seq2seq", "causal", "chat", "diffusion"} <= names
    outside = [f"{path.relative_to(ROOT)}:{line} {value!r}" for name, path in MODULES.items()
               if not name.startswith("src.families") for line, value in string_constants(path) if value in names]
    assert outside == [], "family names compared or spelled outside src/families/:\n" + "\n".join(outside)


@pytest.mark.parametrize("name", ["seq2seq", "causal", "chat", "diffusion"])
def test_every_built_in_family_keeps_the_family_contract(name):
    from src.families.registry import FAMILIES
    from src.families.protocol import ModelFamily, missing_members

    family = FAMILIES.get(name)
    assert isinstance(family, ModelFamily)
    assert missing_members(family) == []
    assert family.name == name and family.kind in ("text", "image")
    assert FAMILIES.of_module_class(family.module_class) is family
