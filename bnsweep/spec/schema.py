"""The JSON Schema of a sweep spec file, from the typed sections (``bnsweep schema`` writes it; the committed copy is
``docs/sweep-spec.schema.json``), so that an editor completes and checks specs as they are typed: every spec in
``sweeps/`` starts with ``# yaml-language-server: $schema=<relative path to it>``.

It describes a partial spec too (nothing is required: an ``include:`` file has no ``name``); ``bnsweep plan``
remains the full check (file:line blame, ``one_of`` options, values that only fail together).

>>> schema = spec_schema()
>>> schema["properties"]["method"]["enum"], "model.depth" in schema["properties"]["fixed"]["properties"]
(['grid', 'random', 'tpe', 'cmaes'], True)
"""

from __future__ import annotations

import json
from typing import Any

from bnsweep.spec.config import TrialConfig, config_keys, sections, selectors
from bnsweep.spec.schedules import SCHEDULE_TYPES
from bnsweep.spec.sections import Constant, Distribution, OneOf, SpecFile, Values

__all__ = ["SCHEMA_PATH", "spec_schema", "spec_schema_json"]

SCHEMA_PATH = "docs/sweep-spec.schema.json"  # relative to the repository root
_ID = "https://bnsweep.invalid/sweep-spec.schema.json"  # a name, not a place: the schema travels with the project


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """``schema`` with its ``$ref``s to ``defs`` resolved (one level of the result is self-contained)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            rest = {k: v for k, v in schema.items() if k != "$ref" and not (k == "default" and isinstance(v, dict))}
            return {**_inline(defs[schema["$ref"].rsplit("/", 1)[1]], defs), **rest}
        return {k: _inline(v, defs) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _loose_union(schema: dict[str, Any]) -> dict[str, Any]:
    """A tagged union as the spec accepts it under ``fixed``: any kind (the tag may come from an include, or be
    the default's), or the kind's name alone."""
    kinds = schema.get("oneOf") or schema.get("anyOf") or [schema]
    return {"anyOf": [*kinds, {"type": "string", "enum": list(SCHEDULE_TYPES)}],
            "description": schema.get("description", "")}


def _fixed(defs: dict[str, Any]) -> dict[str, Any]:
    trial = _inline(TrialConfig.model_json_schema(), defs)
    props: dict[str, Any] = {}
    tagged = selectors()
    for name, sub in trial["properties"].items():
        if name == "seed":
            continue  # per replicate: the spec's top-level seed
        props[name] = _loose_union(sub) if name in tagged else sub
    for key, field in config_keys().items():
        section, _, leaf = key.partition(".")
        if not leaf or section not in sections():
            continue
        kinds = props[section]["anyOf"][:-1] if section in tagged else [props[section]]
        found: dict[str, Any] = next((k["properties"][leaf] for k in kinds if leaf in k.get("properties", {})), {})
        props[key] = {**found, "description": field.description or found.get("description", "")}
    data = props["data"]
    data["properties"]["dataset"] = {**data["properties"]["source"], "description": "alias of data.source"}
    props["data.dataset"] = data["properties"]["dataset"]
    return {"type": "object", "description": SpecFile.model_fields["fixed"].description,
            "properties": props, "additionalProperties": False}


def _param_defs() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in (Values, Constant, Distribution, OneOf):
        schema = cls.model_json_schema(by_alias=True)
        out[cls.__name__] = schema.pop("$defs", {}).get(cls.__name__, schema)
    out["OneOf"]["properties"]["one_of"] = {
        "type": "object", "minProperties": 1, "description": OneOf.model_fields["options"].description,
        "additionalProperties": {"type": ["object", "null"], "description": "this option's settings: trial-config "
                                                                            "keys -> a constant or a parameter spec"}}
    out["Param"] = {"anyOf": [{"$ref": f"#/$defs/{n}"} for n in ("Values", "Constant", "Distribution", "OneOf")]}
    return out


def _parameters(fixed: dict[str, Any]) -> dict[str, Any]:
    param = {"$ref": "#/$defs/Param"}
    props: dict[str, Any] = {}
    for key, sub in fixed["properties"].items():
        section, _, leaf = key.partition(".")
        if section in sections() and not leaf:  # a one_of over the section, or its keys nested
            nested = {k.partition(".")[2]: {**param, "description": s.get("description", "")}
                      for k, s in fixed["properties"].items() if k.startswith(key + ".")}
            props[key] = {"anyOf": [param, {"type": "object", "properties": nested, "additionalProperties": False}],
                          "description": sub.get("description", "")}
        else:
            props[key] = {**param, "description": sub.get("description", "")}
    return {"type": "object", "description": SpecFile.model_fields["parameters"].description,
            "properties": props, "additionalProperties": False}


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec file, partial specs included."""
    schema = SpecFile.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    trial_defs = TrialConfig.model_json_schema().get("$defs", {})
    schema.pop("required", None)  # an include: file is a partial spec; `plan` requires `name` where it must be
    fixed = _fixed({**trial_defs, **defs})
    schema["properties"]["fixed"] = fixed
    schema["properties"]["parameters"] = _parameters(fixed)
    for name in ("metric", "scheduler", "resources", "tracking"):
        schema["properties"][name] = _inline(schema["properties"][name], defs)
    schema["properties"]["name"].pop("default", None)
    return _tidy({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": _ID,
            "title": "bnsweep sweep spec",
            "description": "A bnsweep sweep spec (sweeps/*.yaml), or a partial one that others include. "
                           "`bnsweep plan SPEC` checks it fully.",
            **{k: v for k, v in schema.items() if k not in ("title", "description")},
            "$defs": _param_defs()})


_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _tidy(node: Any) -> Any:
    """Standard JSON Schema where pydantic writes its own: a number kept as written (``int | float``) with bounds
    becomes ``{"type": "number", "minimum": ...}``; docstrings lose their doctest examples."""
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _tidy(v) for k, v in node.items()}
    if out.get("anyOf") == [{"type": "integer"}, {"type": "number"}]:
        del out["anyOf"]
        out["type"] = "number"
    for ours, std in _BOUNDS.items():
        if ours in out and not isinstance(out[ours], dict):
            out[std] = out.pop(ours)
    if isinstance(out.get("description"), str):
        out["description"] = out["description"].split("\n\n>>>")[0].strip()
    return out


def spec_schema_json() -> str:
    """``spec_schema()`` as the text ``bnsweep schema`` writes (stable: sorted nothing, indented, final newline)."""
    return json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"
