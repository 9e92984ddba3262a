"""The package's shape, read with `ast` (nothing imported): no import cycle, short files, no repeated runs of code."""

import ast
import logging
import re
from collections import defaultdict
from pathlib import Path

import sana_lightning

PACKAGE = Path(__file__).parents[1] / "sana_lightning"
MAX_LINES, MAX_CLI_LINES, RUN = 300, 150, 6


def sources() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package's `__init__` is the package)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST):
    """Every import statement, at module level and inside functions, except `if TYPE_CHECKING:` ones (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if not (isinstance(node, ast.If) and is_type_checking(node)):
            yield from import_nodes(node)


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported package module: line}. `from p import x` imports `p.x` when x is a submodule. Importing
    `a.b.c` also runs the `__init__` of `a` and `a.b`, except those of the importer's own packages: they have run
    before it (an import that names them, as `from a import name`, still counts)."""
    modules = sources()
    graph: dict[str, dict[str, int]] = {module: {} for module in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        own = set(ancestors(module))
        for node in import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif node.level:  # relative: from .x import y / from .. import y
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
                named = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                base = node.module
                named = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in named:
                while name not in modules and "." in name:  # `import a.b.attr` style leftovers
                    name = name.rpartition(".")[0]
                if name not in modules:
                    continue  # not ours
                for target in [*(a for a in ancestors(name) if a not in own), name]:
                    if target != module:
                        graph[module].setdefault(target, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module (Tarjan, then BFS)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        start = min(component)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            targets = sorted(t for t in graph[path[-1]] if t in component)
            if start in targets:
                cycles.append([*path, start])
                break
            for target in targets:
                if target not in seen:
                    seen.add(target)
                    paths.append([*path, target])
    return sorted(cycles)


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    modules = sources()
    steps = [f"{a} ({modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join([*steps, cycle[-1]])


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    cycles = [describe(cycle, graph) for cycle in find_cycles(graph)]
    assert not cycles, "import cycles, one per tangle (module (file:line of its import) -> ...):\n" + "\n".join(cycles)


def test_the_cycle_finder_reports_a_path():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_files_are_short():
    modules = sources()
    lines = {str(path.relative_to(PACKAGE.parent)): line_count(path) for path in modules.values()}
    long = [f"{name}: {n} lines (over {MAX_LINES})" for name, n in lines.items() if n > MAX_LINES]
    if lines["sana_lightning/cli.py"] >= MAX_CLI_LINES:
        long.append(f"sana_lightning/cli.py: {lines['sana_lightning/cli.py']} lines (under {MAX_CLI_LINES} wanted)")
    assert not long, "long files:\n" + "\n".join(long)


PUNCTUATION = re.compile(r"^[()\[\]{},:;.\s]*$")


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped line) of the lines that carry code: no blank, comment-only or bracket-only lines, and
    no import statements (two modules importing the same names repeat no code)."""
    text = path.read_text()
    imports = {
        line
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for line in range(node.lineno, node.end_lineno + 1)
    }
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if number not in imports]
    return [(n, line) for n, line in lines if line and not line.startswith("#") and not PUNCTUATION.match(line)]


def repeated_runs(files: dict[str, list[tuple[int, str]]], run: int = RUN) -> list[str]:
    """Runs of `run` or more code lines that occur twice, as `file:first-last == file:first-last (n lines)`: a
    longer run is reported once, not once per window."""
    windows = defaultdict(list)
    for name, lines in files.items():
        for i in range(len(lines) - run + 1):
            windows[tuple(line for _, line in lines[i : i + run])].append((name, i))
    matching = {(a, b) for places in windows.values() for a in places for b in places if a < b}
    found = []
    for (name_a, i), (name_b, j) in sorted(matching):
        if ((name_a, i - 1), (name_b, j - 1)) in matching:
            continue  # inside a run reported from its start
        length = run
        while ((name_a, i + length - run + 1), (name_b, j + length - run + 1)) in matching:
            length += 1
        a, b = files[name_a], files[name_b]
        found.append(
            f"{name_a}:{a[i][0]}-{a[i + length - 1][0]} == {name_b}:{b[j][0]}-{b[j + length - 1][0]} ({length} lines)"
        )
    return found


def test_no_repeated_runs_of_code():
    files = {str(p.relative_to(PACKAGE.parent)): code_lines(p) for p in sources().values()}
    found = repeated_runs(files)
    assert not found, f"runs of {RUN}+ code lines repeated:\n" + "\n".join(found)


def test_repeated_runs_are_found_once_with_their_places():
    block = [f"x{i} = {i}" for i in range(8)]
    files = {
        "a.py": list(enumerate(["a = 0", *block, "b = 1"], 1)),
        "b.py": list(enumerate([*block[:7], "other", *block[:5]], 1)),
    }
    assert repeated_runs(files) == ["a.py:2-8 == b.py:1-7 (7 lines)"]  # b.py's second copy is only 5 lines


def test_code_lines_skip_blank_comment_bracket_and_import_lines(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from x import (\n    a,\n    b,\n)\n\n# note\ncall(\n    a,\n)\n")
    assert code_lines(path) == [(7, "call("), (8, "a,")]


def test_bitsandbytes_kernel_fetch_warning_is_dropped_and_nothing_else():
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    message = (
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already `pip install "
        "kernels` and the kernels >= 0.11.1"
    )

    def record(msg: str, *args) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.WARNING, "ops.py", 243, msg, args, None)

    assert sana_lightning.BNB_KERNEL_FETCH_FAILED in message
    assert not logger.filter(record(message, ModuleNotFoundError("No module named 'kernels'")))
    assert logger.filter(record("something else went wrong: %s", "x"))
    assert logging.getLogger("bitsandbytes").filter(record(message, "x"))  # only that logger filters
