"""The typed building blocks of every config section: one strict, frozen pydantic base model, the number types,
and pydantic's errors said in bnsweep's words (the dotted key, what was received, what is allowed).

pydantic does the type, range and choice checks; this module only phrases them. What a field allows is read off
its type and constraints (``Field(ge=1, le=10)`` → "an integer from 1 to 10"), or given with ``Allowed`` where the
constraints do not say it (depth 6·D+2). Floats are floats (an integer given for a float field becomes a float,
so Keras and Ray receive what the field says); ``Number`` keeps an integer an integer (epochs, CPUs).

>>> from pydantic import Field
>>> class Demo(Section):
...     depth: int = Field(2, ge=1, le=10)
...     rate: float = Field(0.5, ge=0, lt=1)
>>> Demo(rate=0).rate
0.0
>>> try:
...     Demo(depth=True)
... except ConfigError as e:
...     print(e)
depth: expected an integer from 1 to 10, received True
>>> describe(Demo.model_fields["rate"])
'a number in [0, 1)'
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ConfigDict, PlainSerializer, ValidationError
from pydantic.fields import FieldInfo

from bnsweep.spec.errors import ConfigError, ConfigErrors

__all__ = ["Allowed", "ListOut", "Number", "Section", "config_errors", "describe", "selector_of", "tags_of"]


class Allowed:
    """What a field allows, in words, where its type and constraints do not say it (``Annotated`` metadata)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Allowed({self.text!r})"


Number = Union[int, float]  # noqa: UP007 - an integer stays an integer, a float a float; never a bool or a string

ListOut = PlainSerializer(list, return_type=list)  # a tuple inside a (frozen) model, a list in its dump


if TYPE_CHECKING:
    from pydantic._internal._model_construction import ModelMetaclass as _ModelMeta
else:
    _ModelMeta = type(BaseModel)  # pydantic's model metaclass (not exported by name)


class _RaisesOurErrors(_ModelMeta):
    """Building a section directly (``ModelConfig(depth=21)``) raises bnsweep's error, not pydantic's; nested
    sections validated from dicts never come here (pydantic's own fast path)."""

    def __call__(cls, *args: Any, **data: Any) -> Any:
        try:
            return super().__call__(*args, **data)
        except ValidationError as e:
            raise cls.construction_error(e, data) from None  # type: ignore[attr-defined]  # (Section's)


class Section(BaseModel, metaclass=_RaisesOurErrors):
    """A config section: strict types, frozen, unknown keys refused. Building one directly raises ``ConfigError``
    (its first problem, with the dotted key under ``_key``); ``model_validate`` raises pydantic's
    ``ValidationError`` (``config_errors`` says it in bnsweep's words)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False, validate_by_name=True,
                              validate_by_alias=True)
    _key: ClassVar[str] = ""  # the dotted key of this section in its parent ("model", "lr_schedule", ...)

    def replace(self, **changes: Any) -> Any:
        """A validated copy with ``changes`` (a section's own keys), as ``dataclasses.replace`` was."""
        return type(self)(**{**self.model_dump(), **changes})

    @classmethod
    def construction_error(cls, error: ValidationError, data: Mapping[str, Any]) -> Exception:
        """What building this section directly from ``data`` raises for ``error``."""
        return config_errors(error, cls, data, prefix=cls._key)[0]

    @classmethod
    def unknown_key_phrase(cls) -> str:
        """What an unknown key of this section is told is allowed."""
        return "one of " + ", ".join(cls.model_fields)


# ---------------------------------------------------------------- what a field allows, in words


def _number(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return f"{v:g}"


def _bounds(meta: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in meta:
        for name in ("gt", "ge", "lt", "le", "min_length"):
            if getattr(m, name, None) is not None and isinstance(m, (at.BaseMetadata, at.GroupedMetadata)):
                out[name] = getattr(m, name)
    return out


def _range(what: str, b: Mapping[str, Any], *, integer: bool) -> str:
    lo = ("ge", b["ge"]) if "ge" in b else ("gt", b["gt"]) if "gt" in b else None
    hi = ("le", b["le"]) if "le" in b else ("lt", b["lt"]) if "lt" in b else None
    if integer and lo and lo[0] == "gt":
        lo = ("ge", lo[1] + 1)
    if integer and lo and hi and hi[0] == "le":
        return f"{what} from {_number(lo[1])} to {_number(hi[1])}"
    if lo and hi:
        left, right = "[" if lo[0] == "ge" else "(", "]" if hi[0] == "le" else ")"
        return f"{what} in {left}{_number(lo[1])}, {_number(hi[1])}{right}"
    op = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = [f"{op[b[0]]} {_number(b[1])}" for b in (lo, hi) if b]
    return f"{what} {' and '.join(parts)}" if parts else what


def _phrase(annotation: Any, meta: list[Any]) -> str:
    for m in meta:
        if isinstance(m, Allowed):
            return m.text
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        inner: list[Any] = []
        for m in extra:
            inner.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        return _phrase(base, [*inner, *meta])
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        real = [a for a in args if a is not type(None)]
        if set(real) == {int, float}:
            text = _range("a number", _bounds(meta), integer=False)
        else:
            text = " or ".join(dict.fromkeys(_phrase(a, meta if len(real) == 1 else []) for a in real))
        return text + (", or null" if len(real) < len(args) else "")
    if origin is Literal:
        return "one of " + ", ".join(str(v) for v in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return _range("an integer", _bounds(meta), integer=True)
    if annotation is float:
        return _range("a number", _bounds(meta), integer=False)
    if annotation is str:
        return "a non-empty string" if _bounds(meta).get("min_length") else "a string"
    if origin in (tuple, list):
        return "a list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of " + ", ".join(annotation.model_fields)
    return "a valid value"


def describe(field: FieldInfo) -> str:
    """What ``field`` allows, in words: ``'an integer from 1 to 1,048,576'``, ``'one of sgd, adam, adamw'``."""
    return _phrase(field.annotation, list(field.metadata))


# ---------------------------------------------------------------- tagged unions


def _models(annotation: Any) -> list[type[BaseModel]]:
    if get_origin(annotation) is Annotated:
        return _models(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for a in get_args(annotation) for m in _models(a)]
    return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def tags_of(field: FieldInfo) -> dict[str, type[BaseModel]]:
    """A discriminated-union field's tag -> model (``{}`` for any other field)."""
    if not isinstance(field.discriminator, str):
        return {}
    return {typing.get_args(m.model_fields[field.discriminator].annotation)[0]: m for m in _models(field.annotation)}


def selector_of(field: FieldInfo) -> str | None:
    """The discriminator of a tagged-union field (``"type"`` for the LR schedule), else None."""
    return field.discriminator if isinstance(field.discriminator, str) else None


# ---------------------------------------------------------------- pydantic's errors -> ConfigError


def _at(data: Any, loc: Iterable[Any]) -> Any:
    for part in loc:
        indexed = isinstance(data, (list, tuple)) and isinstance(part, int) and 0 <= part < len(data)
        if indexed or (isinstance(data, Mapping) and part in data):
            data = data[part]
        else:
            return None
    return data


def _resolve(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], list[Any], FieldInfo | None,
                                                                     type[BaseModel]]:
    """The dotted key parts of ``loc`` (union tags and variant names dropped), the loc of the field's value, the
    field, and the model holding it (for an unknown key: that model, and no field)."""
    keys: list[str] = []
    value_loc: list[Any] = []
    field: FieldInfo | None = None
    current: Any = model
    owner = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            owner = current
            names = {f.alias or n: n for n, f in current.model_fields.items()}
            if part not in names and part not in current.model_fields:
                return [*keys, str(part)], [*value_loc, part], None, owner
            field = current.model_fields[names.get(part, part)]
            keys.append(field.alias or str(names.get(part, part)))
            value_loc.append(part)
            tags = tags_of(field)
            current = tags if tags else field.annotation
        elif isinstance(current, dict) and part in current:  # a tagged union: the tag picks the model
            current = current[part]
        else:  # an item of a list, or the variant of a plain union (int | float): the field's own error
            return keys, value_loc, field, owner
    return keys, value_loc, field, owner


def config_errors(error: ValidationError, model: type[BaseModel], data: Any, *, prefix: str = ""
                  ) -> list[ConfigError]:
    """pydantic's errors for ``model.model_validate(data)`` as ``ConfigError``s: one per key (the first), in
    pydantic's order, the dotted key under ``prefix``."""
    out: dict[str, ConfigError] = {}
    head = [prefix] if prefix else []
    for e in error.errors(include_url=False):
        keys, value_loc, field, owner = _resolve(model, tuple(e["loc"]))
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, (ConfigError, ConfigErrors)):
            for c in cause.errors if isinstance(cause, ConfigErrors) else [cause]:
                key = ".".join([*head, *keys, *([c.key] if c.key else [])])
                out.setdefault(key, ConfigError(key, c.received, c.allowed))
            continue
        key = ".".join([*head, *keys])
        received = _at(data, value_loc) if value_loc else data
        if e["type"] == "extra_forbidden":
            allowed = _unknown_phrase(owner, data, value_loc[:-1])
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found") and field is not None:
            tags = tags_of(field)
            key += f".{field.discriminator}"
            received = received.get(field.discriminator) if isinstance(received, Mapping) else received
            allowed = "one of " + ", ".join(tags)
        elif field is not None:
            allowed = describe(field)
        else:
            allowed = "a mapping" if e["type"] in ("model_type", "dict_type", "model_attributes_type") else e["msg"]
        out.setdefault(key, ConfigError(key, received, allowed))
    return list(out.values()) or [ConfigError(prefix, data, str(error))]


def _unknown_phrase(owner: type[BaseModel], data: Any, loc: list[Any]) -> str:
    phrase = getattr(owner, "unknown_key_phrase", None)
    if phrase is None:
        return "one of " + ", ".join(owner.model_fields)
    return str(phrase())
