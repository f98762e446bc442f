"""The package's layering: data flows one way, so no module imports itself back (not even
through an import inside a function), and the low rooms do not load the high ones."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[ast.ImportFrom]:
    """Every relative import, at module level or inside a function, except those under
    `if TYPE_CHECKING:` (type hints only, never run)."""
    found: list[ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.ImportFrom) and child.level:
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """minigpt module -> the minigpt modules it imports. The package itself (`minigpt`) is
    left out as a target: its __init__ only names the public API, loaded on first use."""
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / "minigpt").rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import checkpoint` imports a module
                sub = f"{target}.{alias.name}"
                is_module = (SRC / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (SRC / Path(*sub.split(".")) / "__init__.py").exists()
                targets.add(sub if is_module else target)
        graph[name] = {t for t in targets if t not in (name, "minigpt")}
    return graph


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_module_imports_itself_back():
    graph = import_graph()
    assert {"minigpt.config", "minigpt.positional", "minigpt.training"} <= set(graph)
    cycles = [c for c in (_cycle_from(m, graph) for m in graph) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_low_rooms_do_not_load_high_ones():
    """config knows nothing of the encodings or the study, and data nothing of the model,
    when they are imported (config looks an encoding up only when it checks a config)."""
    code = ("import sys, minigpt.config, minigpt.data, minigpt.metrics; "
            "print(' '.join(m for m in sys.modules if m.startswith('minigpt')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=True)
    loaded = set(r.stdout.split())
    assert "minigpt.config" in loaded
    for high in ("minigpt.positional", "minigpt.model", "minigpt.study", "minigpt.training"):
        assert high not in loaded, f"{high} was imported"


def test_every_function_reads_in_one_screen():
    """No function in src/ is longer than 60 lines (decorators and docstring included)."""
    long = []
    for path in sorted((SRC / "minigpt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > 60:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} "
                                f"({node.end_lineno - first + 1} lines)")
    assert not long, long


def test_rooms_do_not_import_the_package_facade():
    """A room that takes a name from `minigpt/__init__.py` (`from . import __version__`) runs
    back up the layers; the version has a module of its own (minigpt.version)."""
    offenders = set()
    for path in sorted((SRC / "minigpt").rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            facade_names = [a.name for a in node.names
                            if not (SRC / "minigpt" / f"{a.name}.py").exists()
                            and not (SRC / "minigpt" / a.name).is_dir()]
            if target == "minigpt" and facade_names and name != "minigpt":
                offenders.add(name)
    assert not offenders, sorted(offenders)


def test_the_version_is_the_one_pyproject_declares():
    import tomllib

    import minigpt
    from minigpt.version import __version__

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert __version__ == minigpt.__version__ == project["project"]["version"]
