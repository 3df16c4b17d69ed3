"""Spec files as YAML: read safely (plain data only, YAML 1.2 floats such as ``1e-3``, limits against hostile
files, the line of every key and item), and written back so that they read back the same.

>>> yaml_value("5e-4"), yaml_value("[0.5, 0.75]"), yaml_value("cosine")
(0.0005, [0.5, 0.75], 'cosine')
>>> text = dump_yaml({"description": "1e3", "n": 1e3})
>>> print(text, end="")
description: '1e3'
n: 1000.0
>>> yaml_value(text) == {"description": "1e3", "n": 1e3}
True
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from bnsweep.base.text import shorten
from bnsweep.spec.errors import Problem

__all__ = ["MAX_BYTES", "dump_yaml", "read_yaml", "yaml_value"]

MAX_NODES = 100_000  # YAML nodes after alias expansion ("billion laughs", recursive aliases)
MAX_BYTES = 4_000_000
MAX_DEPTH = 64  # nesting of YAML collections
_FLOAT_12 = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats like ``1e-3`` (PyYAML reads them as strings)."""


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes every string ``_Loader`` would read as something else (``'1e3'``)."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))
_SAFE_TAGS = {t for t in _Loader.yaml_constructors if t is not None}


def yaml_value(text: str) -> Any:
    """Read one YAML value the way specs are read (safe; ``1e-3`` is a float), e.g. for ``--set k=v``.

    >>> yaml_value("5e-4"), yaml_value("[0.5, 0.75]"), yaml_value("cosine")
    (0.0005, [0.5, 0.75], 'cosine')
    """
    return yaml.load(text, Loader=_Loader)  # _Loader is a yaml.SafeLoader subclass


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _walk(root: yaml.Node, file: str, problems: list[Problem]) -> dict[str, int] | None:
    """Dotted YAML path -> line (1-based) of every key and list item; flags unsafe tags and duplicate keys.
    None if the document is too large (alias bombs, recursive aliases)."""
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    count = 0
    ok = True
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > MAX_NODES or depth > MAX_DEPTH:
            what = f"more than {MAX_NODES} YAML nodes" if count > MAX_NODES else f"nested deeper than {MAX_DEPTH}"
            problems.append(Problem(file, None, "", f"too large: {what} after expanding aliases "
                                                    "(recursive or nested aliases?)"))
            return None
        line = node.start_mark.line + 1
        if node.tag not in _SAFE_TAGS:
            problems.append(Problem(file, line, path, f"unsupported YAML tag {_short_tag(node.tag)!r}: specs "
                                                      "are read with a safe loader (plain data only)"))
            ok = False
            continue
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    stack.append((v, path, depth + 1))
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    problems.append(Problem(file, k.start_mark.line + 1, path, "mapping keys must be plain names"))
                    ok = False
                    continue
                kp = f"{path}.{k.value}" if path else str(k.value)
                kline = k.start_mark.line + 1
                if k.value in seen:
                    problems.append(Problem(file, kline, kp, f"duplicate key (first given on line {seen[k.value]})"))
                    ok = False
                seen[k.value] = kline
                lines.setdefault(kp, kline)
                stack.append((v, kp, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                ip = f"{path}[{i}]"
                lines.setdefault(ip, item.start_mark.line + 1)
                stack.append((item, ip, depth + 1))
    return lines if ok else None


def read_yaml(text: str, file: str, problems: list[Problem]) -> tuple[Any, dict[str, int]] | None:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            problems.append(Problem(file, None, "", "empty spec: expected a mapping with at least `name`"))
            return None
        lines = _walk(node, file, problems)
        if lines is None:
            return None
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        context = f"{e.context} (line {e.context_mark.line + 1})" if e.context and e.context_mark else e.context
        what = ": ".join(str(x) for x in (context, e.problem) if x)
        problems.append(Problem(file, mark.line + 1 if mark else None, "", f"invalid YAML: {what}"))
        return None
    except yaml.YAMLError as e:
        problems.append(Problem(file, None, "", f"invalid YAML: {e}"))
        return None
    except RecursionError:
        problems.append(Problem(file, None, "", "invalid YAML: nested too deeply"))
        return None
    except (ValueError, TypeError, OverflowError) as e:
        problems.append(Problem(file, None, "", f"invalid YAML value: {e}"))
        return None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        problems.append(Problem(file, 1, "", "expected a mapping of spec keys (name, method, ...), "
                                             f"received {shorten(data)}"))
        return None
    return data, lines


def dump_yaml(data: Any) -> str:
    """``data`` as YAML that ``read_yaml`` / ``yaml_value`` read back to ``data`` (keys in their order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
