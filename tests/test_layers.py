"""The package's layers stay layers: imports only go down (or sideways within a layer), there is no import
cycle (lazy imports inside functions included), the spec layer loads no ML or cluster library, the engine
never imports Ray, and the top-level ``analysis/`` folder is only ever imported as ``bnsweep.analysis``.

Layers, bottom to top (docs/design.md): base → spec → engine → store → sweep → analysis → report → cli.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("base", "spec", "engine", "store", "sweep", "analysis", "report", "cli")
HEAVY = ("keras", "tensorflow", "jax", "ray", "optuna", "wandb", "pandas", "matplotlib", "pyarrow")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / "bnsweep").rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    for p in sorted((ROOT / "analysis").rglob("*.py")):
        parts = ["bnsweep", *p.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the package itself (bnsweep/__init__.py)
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1]


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module imported anywhere in the file (top level, functions, TYPE_CHECKING blocks)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names
                    if f"{node.module}.{a.name}" in MODULES]
    return out


def _internal(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_every_module_sits_in_a_known_layer():
    assert {_layer(m) for m in MODULES} <= set(LAYERS), sorted({_layer(m) for m in MODULES} - set(LAYERS))


def test_imports_only_go_down_or_sideways():
    upward = []
    for module, path in MODULES.items():
        rank = LAYERS.index(_layer(module))
        for name, line in _imports(path):
            target = _internal(name)
            if target and LAYERS.index(_layer(target)) > rank:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module} ({_layer(module)}) imports "
                              f"{target} ({_layer(target)})")
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    graph = {m: {t for name, _ in _imports(p) if (t := _internal(name)) and t != m and t != m.rpartition(".")[0]}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t):], t] if t in stack else [m, t])
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_what_they_must_not():
    rules = {"base": HEAVY, "spec": HEAVY, "engine": ("ray", "optuna", "wandb"), "store": ("ray", "optuna")}
    bad = []
    for module, path in MODULES.items():
        banned = rules.get(_layer(module), ())
        for name, line in _imports(path):
            if name.split(".")[0] in banned:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {name}")
    assert not bad, "\n".join(bad)


def test_analysis_is_only_imported_under_the_project_name():
    bad = []
    for path in [*MODULES.values(), *sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "bench").glob("*.py")),
                 *sorted((ROOT / "scripts").glob("*.py"))]:
        for name, line in _imports(path):
            if name == "analysis" or name.startswith("analysis."):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name} (use bnsweep.analysis)")
    assert not bad, "\n".join(bad)


def test_importing_the_spec_layer_loads_no_ml_or_cluster_library():
    spec_modules = [m for m in MODULES if _layer(m) in ("base", "spec")]
    code = ("import importlib, sys\n"
            f"for m in {spec_modules!r}: importlib.import_module(m)\n"
            f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_the_readme_layout_lists_every_module_of_the_tree_and_nothing_else():
    """README's Layout block names each package folder and module, indented under its folder (a listed
    folder stands for its ``__init__.py``); a module added, moved or deleted without the README fails here."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not (name.endswith("/") or name.endswith(".py")):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([p for _, p in stack] + [name.rstrip("/")])
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
        listed.add(path)
    listed_modules = {p for p in listed if p.endswith(".py")}
    listed_modules |= {f"{p}/__init__.py" for p in listed
                       if not p.endswith(".py") and (ROOT / p / "__init__.py").exists()}
    actual = {str(p.relative_to(ROOT)) for top in ("bnsweep", "analysis") for p in (ROOT / top).rglob("*.py")}
    assert listed_modules == actual, (sorted(actual - listed_modules), sorted(listed_modules - actual))
    folders = {str(p.relative_to(ROOT)) for p in (ROOT / "bnsweep").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= listed, sorted(folders - listed)
    for top in ("sweeps", "tests", "bench", "scripts", "docs"):
        assert top in listed and (ROOT / top).is_dir(), top
