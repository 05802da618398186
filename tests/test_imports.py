"""The package's modules import each other without cycles (function-level imports included)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpir_fast"


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports anywhere in its code (relative imports; a package's own
    parents are left out: importing a submodule always has its parents loaded first)."""
    files = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {m: set() for m in files}
    for m, f in files.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{a.name}" for a in node.names} & files.keys()
            for name in submodules if submodules and not node.module else {target, *submodules}:
                if name in files and name != m and not m.startswith(name + "."):
                    graph[m].add(name)
    return graph


def test_no_module_imports_itself_through_others():
    graph, cycles = import_graph(), []

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt == start:
                cycles.append(" -> ".join(path + [start]))
            elif nxt not in path and nxt > start:   # each cycle found once, from its smallest module
                visit(start, nxt, path + [nxt])

    for module in graph:
        visit(module, module, [module])
    assert not cycles, cycles
    assert "dpir_fast.pretrained" in graph["dpir_fast.pipeline"]   # function-level imports count too
