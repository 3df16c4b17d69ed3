"""The shape of the package in numbers, at any commit: modules, lines of the spec layer, import cycles, the longest
functions, the places that special-case the LR schedule's shape, and validation-looking lines.

Reads sources only (``git show REV:PATH``, or the working tree for ``.``); nothing is imported or run.

    .venv/bin/python scripts/house_numbers.py                 # before the layering commit vs the working tree
    .venv/bin/python scripts/house_numbers.py 98a607a HEAD .  # any commits (``.``: the working tree)
    .venv/bin/python scripts/house_numbers.py --json .

What is counted:

- **modules**: ``.py`` files under ``bnsweep/`` and ``analysis/``;
- **spec lines**: lines of ``bnsweep/spec.py`` + ``config.py`` + ``schedules.py`` (the flat package), or of
  ``bnsweep/spec/*.py`` (the layered one), per module;
- **import cycles**: the graph of the project's modules, every ``import`` anywhere in a file (module level,
  inside functions, ``TYPE_CHECKING`` blocks); an edge to a module's own parent package is left out (as
  tests/test_layers.py does); the top-level ``analysis`` package and ``bnsweep.analysis`` are one node set.
  Reported: elementary cycles (and how many use a function-level import), and strongly connected components;
- **longest functions**: every ``def`` (methods and nested functions included), ``end_lineno - lineno + 1``;
- **schedule special cases**: code lines (docstrings and comments never count) that (a) hold a string
  literal ``"lr_schedule"`` / ``"lr_schedule.…"`` (f-strings included) — a key special-cased by name,
  (b) index or ``.get`` a schedule as a dict (``x.lr_schedule[…]``, ``sched["type"]``, ``….get("type")``),
  (c) compare a value with a schedule kind's name (``== "cosine"``, ``in ("step", …)``), or (d) write out
  three or more schedule kinds in one list, tuple, set or dict — counted in the whole package and outside
  the schedule module itself;
- **validation-looking lines** (a heuristic): code lines of the spec modules that call ``isinstance``,
  raise or build a ``ConfigError``/``Problem``, or call a ``_check…`` helper, next to the declarative
  constraints (``Field(…, ge=/gt=/le=/lt=/pattern=/max_length=…)``, ``Literal[…]``) that replace them.

>>> _count_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
[['a', 'b']]
>>> _longest("def f():\\n    x = 1\\n    return x\\n", "m.py")
[(3, 'm.py:1 f')]
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = frozenset({"constant", "step", "multistep", "cosine", "one_cycle", "exponential", "cosine_restarts",
                   "linear_cosine", "rampup_exp", "warmup_cosine"})
OLD_SPEC = ("bnsweep/spec.py", "bnsweep/config.py", "bnsweep/schedules.py")
CONSTRAINTS = ("ge=", "gt=", "le=", "lt=", "pattern=", "max_length=", "min_length=", "multiple_of=")


# ------------------------------------------------------------------ reading a tree


def _files(rev: str) -> dict[str, str]:
    """``{path: source}`` of the package's Python files at ``rev`` (``.``: the working tree)."""
    if rev == ".":
        paths = sorted(str(p.relative_to(ROOT)) for d in ("bnsweep", "analysis") for p in (ROOT / d).rglob("*.py"))
        return {p: (ROOT / p).read_text(encoding="utf-8") for p in paths}
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", "bnsweep", "analysis"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return {p: subprocess.run(["git", "show", f"{rev}:{p}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout for p in listed if p.endswith(".py")}


def _module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == "analysis":  # installed as bnsweep.analysis (or, before, as a top-level `analysis`)
        parts = ["bnsweep", *parts]
    return ".".join(parts)


def _docstring_lines(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return out


# ------------------------------------------------------------------ imports and cycles


def _resolve(name: str, modules: set[str]) -> str | None:
    if name == "analysis" or name.startswith("analysis."):
        name = "bnsweep." + name
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> dict[str, bool]:
    """Internal modules imported by ``module`` -> whether only inside functions (lazily)."""
    lazy_nodes: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lazy_nodes.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    out: dict[str, bool] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for n in names:
            target = _resolve(n, modules)
            if target is None or target in (module, module.rpartition(".")[0]):
                continue
            if n != names[0] and target != n:  # `from pkg import name`: only a submodule named so counts
                continue
            out[target] = out.get(target, True) and id(node) in lazy_nodes
    return out


def _count_cycles(graph: dict[str, set[str]], limit: int = 10_000) -> list[list[str]]:
    """Elementary cycles (each once, starting at its smallest node), up to ``limit``."""
    cycles: list[list[str]] = []
    nodes = sorted(graph)
    for start in nodes:
        stack = [(start, iter(sorted(t for t in graph.get(start, ()) if t >= start)))]
        path = [start]
        while stack and len(cycles) < limit:
            _, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
            elif nxt == start:
                cycles.append(list(path))
            elif nxt not in path:
                path.append(nxt)
                stack.append((nxt, iter(sorted(t for t in graph.get(nxt, ()) if t >= start))))
    return cycles


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------ functions and schedule special cases


def _longest(source: str, path: str) -> list[tuple[int, str]]:
    out = []
    tree = ast.parse(source)

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append(((child.end_lineno or child.lineno) - child.lineno + 1, f"{path}:{child.lineno} {name}"))
                walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def _schedule_cases(source: str) -> dict[str, set[int]]:
    tree = ast.parse(source)
    doc = _docstring_lines(tree)
    found: dict[str, set[int]] = {"key": set(), "dict": set(), "kind": set(), "list": set()}

    def strings(node: ast.AST) -> Iterable[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.JoinedStr):
            for v in node.values:
                yield from strings(v)

    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is None or line in doc:
            continue
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and any(
                s == "lr_schedule" or s.startswith("lr_schedule.") for s in strings(node)):
            found["key"].add(line)
        if isinstance(node, ast.Subscript):
            target = node.value
            named = (isinstance(target, ast.Attribute) and "schedule" in target.attr) or \
                    (isinstance(target, ast.Name) and "sched" in target.id)
            key = node.slice
            if named or (isinstance(key, ast.Constant) and key.value == "type" and isinstance(target, ast.Name)
                         and "sched" in target.id):
                found["dict"].add(line)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "type":
            found["dict"].add(line)
        if isinstance(node, ast.Compare):
            for comp in [node.left, *node.comparators]:
                vals = [comp] if not isinstance(comp, (ast.Tuple, ast.List, ast.Set)) else list(comp.elts)
                if any(isinstance(v, ast.Constant) and v.value in KINDS and v.value != "constant" for v in vals):
                    found["kind"].add(line)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            elts = node.keys if isinstance(node, ast.Dict) else node.elts
            if sum(isinstance(e, ast.Constant) and e.value in KINDS for e in elts) >= 3:
                found["list"].add(line)
    return found


def _validation_lines(source: str) -> dict[str, int]:
    """Validation-looking code lines of one module: ``isinstance`` checks, ``_check…`` calls, errors raised or
    built (``raise``, ``ConfigError(…)``, ``Problem(…)``, ``.problem(…)``), all of these (one line once), and the
    declarative constraint lines."""
    tree = ast.parse(source)
    doc = _docstring_lines(tree)
    found: dict[str, set[int]] = {"isinstance": set(), "check_calls": set(), "errors": set()}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is None or line in doc:
            continue
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name == "isinstance":
                found["isinstance"].add(line)
            elif name.startswith("_check"):
                found["check_calls"].add(line)
            elif name in ("ConfigError", "Problem", "problem"):
                found["errors"].add(line)
        if isinstance(node, ast.Raise):
            found["errors"].add(line)
    lines = source.splitlines()
    declarative = sum(1 for i, text in enumerate(lines, 1) if i not in doc and not text.lstrip().startswith("#")
                      and (("Field(" in text and any(c in text for c in CONSTRAINTS)) or "Literal[" in text))
    return {**{k: len(v) for k, v in found.items()}, "all": len(set().union(*found.values())),
            "declarative": declarative}


VALIDATOR_NAMES = ("__post_init__", "_check", "check", "validate", "_validate")


def _validator_functions(source: str, path: str) -> list[tuple[int, str]]:
    """Functions that validate by hand: ``__post_init__``, ``check…``/``_check…``/``validate…`` and pydantic
    ``@model_validator``/``@field_validator`` methods, with their lengths."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        decorators = {ast.unparse(d).split("(")[0].rsplit(".", 1)[-1] for d in node.decorator_list}
        if node.name.startswith(VALIDATOR_NAMES) or decorators & {"model_validator", "field_validator"}:
            out.append(((node.end_lineno or node.lineno) - node.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    return out


# ------------------------------------------------------------------ one tree


def numbers(rev: str) -> dict[str, Any]:
    files = _files(rev)
    trees = {p: ast.parse(s) for p, s in files.items()}
    modules = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    lazy_edges = set()
    for p, tree in trees.items():
        m = _module_name(p)
        imports = _imports(tree, m, p.endswith("__init__.py"), modules)
        graph[m] = set(imports)
        lazy_edges |= {(m, t) for t, lazy in imports.items() if lazy}
    cycles = _count_cycles(graph)
    eager = {m: {t for t in ts if (m, t) not in lazy_edges} for m, ts in graph.items()}
    spec_files = [p for p in files if p in OLD_SPEC] or sorted(p for p in files if p.startswith("bnsweep/spec/"))
    spec_lines = {p: len(files[p].splitlines()) for p in spec_files}
    functions = sorted((f for p, s in files.items() for f in _longest(s, p)), key=lambda f: (-f[0], f[1]))
    schedule_module = "bnsweep/spec/schedules.py" if "bnsweep/spec/schedules.py" in files else "bnsweep/schedules.py"
    cases: dict[str, dict[str, list[int]]] = {}
    for p, s in files.items():
        found = _schedule_cases(s)
        if any(found.values()):
            cases[p] = {k: sorted(v) for k, v in found.items() if v}
    case_lines = {p: set().union(*map(set, c.values())) for p, c in cases.items()}
    validation = {p: _validation_lines(files[p]) for p in spec_files}
    validators = sorted((f for p in spec_files for f in _validator_functions(files[p], p)), key=lambda f: -f[0])
    return {
        "rev": rev, "modules": len(files), "packages": sorted({str(Path(p).parent) for p in files}),
        "spec_lines": spec_lines, "spec_lines_total": sum(spec_lines.values()),
        "package_lines": sum(len(s.splitlines()) for s in files.values()),
        "cycles": [" -> ".join([*c, c[0]]) for c in cycles],
        "cycles_without_lazy_imports": len(_count_cycles(eager)),
        "strongly_connected": _sccs(graph),
        "longest_functions": [f"{n:4d}  {where}" for n, where in functions[:10]],
        "schedule_cases": sum(len(v) for v in case_lines.values()),
        "schedule_cases_outside_schedule_module": sum(len(v) for p, v in case_lines.items() if p != schedule_module),
        "schedule_cases_by_kind": {k: sum(len(c.get(k, ())) for c in cases.values())
                                   for k in ("key", "dict", "kind", "list")},
        "schedule_kind_lists": {p: c["list"] for p, c in cases.items() if "list" in c},
        "schedule_cases_by_file": {p: len(v) for p, v in sorted(case_lines.items())},
        "validation_lines": {p: v["all"] for p, v in validation.items()},
        "validation_lines_by_kind": {k: sum(v[k] for v in validation.values())
                                     for k in ("isinstance", "check_calls", "errors")},
        "validation_lines_total": sum(v["all"] for v in validation.values()),
        "declarative_constraint_lines": sum(v["declarative"] for v in validation.values()),
        "validator_function_lines": sum(n for n, _ in validators),
        "validator_functions": [f"{n:4d}  {where}" for n, where in validators],
    }


def _text(n: dict[str, Any]) -> str:
    out = [f"== {n['rev']}: {n['modules']} modules in {len(n['packages'])} folders, {n['package_lines']:,} lines",
           f"spec layer: {n['spec_lines_total']:,} lines  " + ", ".join(f"{Path(p).name} {k}"
                                                                     for p, k in n["spec_lines"].items()),
           f"import cycles: {len(n['cycles'])} (without function-level imports: {n['cycles_without_lazy_imports']})"]
    out += [f"  {c}" for c in n["cycles"][:20]]
    out.append(f"strongly connected groups: {len(n['strongly_connected'])}")
    out += [f"  {' '.join(g)}" for g in n["strongly_connected"]]
    out.append("longest functions (lines):")
    out += [f"  {f}" for f in n["longest_functions"]]
    out.append(f"schedule special cases: {n['schedule_cases']} lines "
               f"({n['schedule_cases_outside_schedule_module']} outside the schedule module); by kind "
               + ", ".join(f"{k} {v}" for k, v in n["schedule_cases_by_kind"].items()))
    out += [f"  {p}: {k}" for p, k in n["schedule_cases_by_file"].items()]
    out.append("schedule kinds written out (file: lines): " + (
        "; ".join(f"{p}: {', '.join(map(str, ls))}" for p, ls in n["schedule_kind_lists"].items()) or "none"))
    out.append(f"validation-looking lines in the spec layer: {n['validation_lines_total']} ("
               + ", ".join(f"{k} {v}" for k, v in n["validation_lines_by_kind"].items())
               + f"; declarative constraint lines: {n['declarative_constraint_lines']})")
    out.append("  " + ", ".join(f"{Path(p).name} {k}" for p, k in n["validation_lines"].items()))
    out.append(f"hand-written validator functions in the spec layer: {len(n['validator_functions'])}, "
               f"{n['validator_function_lines']} lines")
    out += [f"  {f}" for f in n["validator_functions"][:12]]
    return "\n".join(out)


def _before_layering() -> str:
    sha = subprocess.run(["git", "log", "--format=%H", "-1", "--grep", "house by layer"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not sha:
        raise SystemExit("error: no commit whose message says 'house by layer'; name the revisions to compare")
    return f"{sha[:7]}^"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("revs", nargs="*", help="commits to measure ('.': the working tree); default: the parent of "
                                            "the layering commit, and the working tree")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    revs = args.revs or [_before_layering(), "."]
    try:
        results = [numbers(r) for r in revs]
    except subprocess.CalledProcessError as e:
        print(f"error: {' '.join(e.cmd)}: {(e.stderr or '').strip().splitlines()[-1:] or e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print("\n\n".join(_text(n) for n in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
