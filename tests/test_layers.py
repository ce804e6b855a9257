"""The package's folders are its layers: no import loops, and no import from a lower layer into a
higher one (or between two folders of one layer).

The order is written once, in docs/architecture.md (the fenced block after ``<!-- layers -->``,
top layer first); this test reads it there, reads every module's imports (function-level ones
too) and checks each against it. The same check runs on small packages written here, so that it
is seen to fail on an upward import, a sibling import, a loop, a facade imported from inside and
a module outside the layers.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "skipganomaly"
ARCHITECTURE = REPO / "docs" / "architecture.md"
# Modules at the package's root: the package itself (imports nothing of the package, everything
# may import it for __version__), the entry point, and the facades that keep documented import
# paths for outside code (nothing inside the package may import a facade).
ROOT_ENTRY = {"__main__"}
FACADES = {"errors", "config", "detector", "predict"}


def read_layers(text: str) -> list[set[str]]:
    """The layers of the ``<!-- layers -->`` block, bottom first: each a set of folder names."""
    match = re.search(r"<!-- layers -->\s*```[a-z]*\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError("docs/architecture.md has no ``<!-- layers -->`` block")
    layers = []
    for line in match.group(1).splitlines():
        folders = set()
        for word in line.split():
            if not word.endswith("/"):
                break
            folders.add(word.rstrip("/"))
        if folders:
            layers.append(folders)
    return layers[::-1]


@dataclass(frozen=True)
class Import:
    source: str  # dotted module names without the package's own name ("" is the package)
    target: str
    line: int
    type_only: bool  # under ``if TYPE_CHECKING``: never runs


def modules_of(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name below it (``""`` for its ``__init__``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports_of(package: Path, name: str) -> list[Import]:
    """The package's own modules that module ``name`` imports, anywhere in it."""
    modules = modules_of(package)
    path = modules[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = _type_checking_lines(tree)
    here = name.split(".") if name else []
    if path.name != "__init__.py":
        here = here[:-1]
    top = package.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bases = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
                base = ".".join([top, *parts])
            else:
                base = node.module or ""
            bases = [(base, alias.name) for alias in node.names]
        else:
            continue
        for base, member in bases:
            if base != top and not base.startswith(top + "."):
                continue
            target = base[len(top) + 1 :]
            submodule = f"{target}.{member}" if target else (member or "")
            if member and submodule in modules:
                target = submodule
            if target in modules and target != name:
                found.append(Import(name, target, node.lineno, node.lineno in type_only))
    return found


def check(package: Path, layers: list[set[str]]) -> list[str]:
    """Every breach of the layers in ``package``: upward and sibling imports, facades imported
    from inside, modules outside the layers, and import loops."""
    level = {name: index for index, names in enumerate(layers) for name in names}
    modules = modules_of(package)
    problems = []
    for name, path in modules.items():
        top = name.split(".")[0]
        if name and "." not in name and path.name != "__init__.py" and top not in ROOT_ENTRY | FACADES:
            problems.append(f"{name}: a module outside the layers; put it in the folder of its layer")
        elif name and top not in level and top not in ROOT_ENTRY | FACADES:
            problems.append(f"{top}/: a folder outside the layers; add it to docs/architecture.md's block")
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name in modules:
        for edge in imports_of(package, name):
            if not edge.type_only:
                graph[name].add(edge.target)
            problems += _layer_problems(edge, level)
    problems += [f"import loop: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _layer_problems(edge: Import, level: dict[str, int]) -> list[str]:
    source, target = edge.source.split(".")[0], edge.target.split(".")[0]
    where = f"{edge.source or '(the package)'} line {edge.line}: imports {edge.target or '(the package)'}"
    if edge.target == "":
        return []  # the package itself (__version__) is below every layer
    if edge.source == "":
        return [f"{where}; the package's __init__ imports none of its modules"]
    if target in FACADES and "." not in edge.target and source not in FACADES | ROOT_ENTRY:
        return [f"{where}, a facade for outside code; import the module it re-exports"]
    if source in FACADES | ROOT_ENTRY or source == target:
        return []
    if target not in level or source not in level:
        return []  # reported as outside the layers
    if level[target] > level[source]:
        return [f"{where}, an upward import ({source}/ is below {target}/)"]
    if level[target] == level[source]:
        return [f"{where}: {source}/ and {target}/ are one layer and import neither"]
    return []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop through each strongly connected set of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                loops.append(_loop_through(graph, set(members)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def _loop_through(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A path from the first member back to itself inside ``members`` (breadth first)."""
    start = min(members)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return sorted(members)


# --------------------------------------------------------------------------- the package
def test_the_package_keeps_its_layers():
    layers = read_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    problems = check(PACKAGE, layers)
    assert not problems, "\n".join(problems)


def test_every_folder_is_a_layer_and_every_layer_a_folder():
    layers = read_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    named = set().union(*layers)
    code_folders = {p.parent.name for p in PACKAGE.glob("*/*.py")}
    assert code_folders == named, f"code folders {sorted(code_folders)} vs layers {sorted(named)}"
    assert layers[0] == {"specs"} and layers[-1] == {"cli"}, layers


# --------------------------------------------------------------------------- the check itself
def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != package and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        path.write_text(text)
    return package


LAYERS = [{"low"}, {"left", "right"}, {"high"}]


def test_a_clean_package_passes(tmp_path):
    package = write_package(
        tmp_path,
        {
            "low/a.py": "X = 1\n",
            "left/b.py": "from ..low.a import X\n",
            "right/c.py": "from ..low import a\n",
            "high/d.py": "from ..left.b import X\nfrom ..right import c\nfrom .e import Y\n",
            "high/e.py": "Y = 2\n",
            "errors.py": "from .low.a import X\n",
        },
    )
    assert check(package, LAYERS) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"low/a.py": "def f():\n    from ..high import d\n", "high/d.py": ""}, "an upward import"),
        ({"left/b.py": "from ..right.c import Y\n", "right/c.py": "Y = 1\n"}, "are one layer"),
        ({"low/a.py": "from .b import X\nY = 1\n", "low/b.py": "from .a import Y\nX = 1\n"}, "import loop"),
        ({"high/d.py": "from ..errors import E\n", "errors.py": "E = 1\n"}, "a facade"),
        ({"loose.py": "X = 1\n"}, "a module outside the layers"),
        ({"other/x.py": "X = 1\n"}, "a folder outside the layers"),
    ],
    ids=["upward", "sibling", "loop", "facade", "loose-module", "unknown-folder"],
)
def test_the_check_finds(tmp_path, files, expected):
    problems = check(write_package(tmp_path, files), LAYERS)
    assert any(expected in problem for problem in problems), problems


def test_a_loop_through_function_level_imports_is_a_loop_and_type_only_imports_are_not(tmp_path):
    looped = write_package(
        tmp_path / "one",
        {"low/a.py": "def f():\n    from .b import g\n", "low/b.py": "def g():\n    from .a import f\n"},
    )
    assert [p for p in check(looped, LAYERS) if "import loop" in p] == [
        "import loop: low.a -> low.b -> low.a"
    ]
    typed = write_package(
        tmp_path / "two",
        {
            "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\n",
            "low/b.py": "from .a import TYPE_CHECKING\n",
        },
    )
    assert check(typed, LAYERS) == []
