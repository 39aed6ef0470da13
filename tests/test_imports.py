"""No import cycles inside ``resnet_jax``: imports inside functions (and under ``TYPE_CHECKING``) count too, since a
lazy import still ties two files together. A shared piece belongs one floor down, in a module both can import."""

from __future__ import annotations

import ast
import itertools
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "resnet_jax"


def module_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every ``.py`` under the package ``root`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_edges(root: pathlib.Path) -> dict[str, dict[str, set[str]]]:
    """module -> {imported module of the same package -> the names taken from it}, from every import statement
    anywhere in the file."""
    modules = module_files(root)
    edges: dict[str, dict[str, set[str]]] = {m: {} for m in modules}

    def add(src: str, dst: str, name: str) -> None:
        if dst in modules and dst != src:
            edges[src].setdefault(dst, set()).add(name)

    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")  # the deepest module of the package that the name reaches
                    target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                                   if ".".join(parts[:i]) in modules), None)
                    if target:
                        add(mod, target, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    add(mod, sub, alias.name) if sub in modules else add(mod, base, alias.name)
    return edges


def find_cycles(edges: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) through every strongly connected component of
    more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [shortest_cycle(edges, c) for c in components]


def shortest_cycle(edges: dict[str, dict[str, set[str]]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first inside the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    return paths[v] + [start]
                if w in component and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def describe(edges: dict[str, dict[str, set[str]]], cycle: list[str]) -> str:
    """``a (x, y) -> b (z) -> a``: each module with the names it takes from the next."""
    return " -> ".join(f"{a} ({', '.join(sorted(edges[a][b]))})" for a, b in itertools.pairwise(cycle)) + \
        f" -> {cycle[-1]}"


def test_resnet_jax_has_no_import_cycles():
    edges = import_edges(PACKAGE)
    assert len(edges) > 30 and edges["resnet_jax.evaluation"], "the walk found the package's modules and imports"
    cycles = find_cycles(edges)
    assert not cycles, "import cycles (move what both need one floor down):\n" + "\n".join(
        describe(edges, c) for c in cycles)


def plant(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("how", ["lazy", "relative", "package"])
def test_a_planted_cycle_is_found_and_named(tmp_path, how):
    """A cycle closed by an import inside a function, by a relative import, or through a package's ``__init__``
    is found, with the names each file takes from the next; a chain without a loop is not a cycle."""
    closing = {"lazy": "def f():\n    from pkg.a import helper\n    return helper\n",
               "relative": "from .a import helper\n",
               "package": "from pkg import sub\n"}[how]
    root = plant(tmp_path, {"__init__.py": "", "a.py": "from pkg.b import thing\n\ndef helper():\n    pass\n",
                            "b.py": "import pkg.c\nthing = 1\n", "c.py": closing,
                            "sub/__init__.py": "from pkg.sub.leaf import x\n", "sub/leaf.py": "x = 1\n"})
    edges = import_edges(root)
    cycles = find_cycles(edges)
    if how == "package":  # c -> pkg.sub -> leaf: no way back, so no cycle
        assert cycles == [] and "pkg.sub" in edges["pkg.c"]
        (root / "sub" / "leaf.py").write_text("from pkg.a import helper\nx = 1\n")
        edges = import_edges(root)
        cycles = find_cycles(edges)
        assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.leaf", "pkg.a"]]
        return
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert describe(edges, cycles[0]) == "pkg.a (thing) -> pkg.b (pkg.c) -> pkg.c (helper) -> pkg.a"
