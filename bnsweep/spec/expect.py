"""What a sweep expects to measure: the ``expect:`` section of a spec, for the reproduction scorecard.

Each key selects trials by their config (dotted trial-config keys, comma-separated ``key=value``);
each value names a results-table metric with the range ``[low, high]`` counted as a reproduction,
and where the number comes from::

    expect:
      "regime=bn, model.depth=110": {test_accuracy: [0.66, 0.73], source: "paper §4: 69.7%"}
      "regime=none": {test_accuracy: [0.08, 0.12], source: "paper Fig. 2: chance"}

``bnsweep export RUN_DIR --scorecard`` marks each expectation *met* (the mean over the selected
completed replicates lies in the range), *missed* (it does not) or *not run* (no completed replicate
matches). Pure Python (no pandas/keras): the spec loader parses it before anything runs.

>>> [e] = parse_expectations({"regime=bn, model.depth=110": {"test_accuracy": [0.66, 0.73], "source": "paper"}})
>>> e.selector, e.metric, e.low, e.high
({'regime': 'bn', 'model.depth': 110}, 'test_accuracy', 0.66, 0.73)
>>> e.verdict(0.697), e.verdict(0.5), e.verdict(None)
('met', 'missed', 'not run')
>>> parse_expectations({"regime=bnn": {"test_accuracy": [0.6, 0.7]}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
bnsweep.spec.errors.ConfigError: expect."regime=bnn": expected one of all, bn, ..., received 'bnn'
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from bnsweep.spec.config import TrialConfig, config_keys
from bnsweep.spec.errors import ConfigError

Metric = Literal["test_accuracy", "test_loss", "val_accuracy_best", "val_accuracy_final", "val_loss_final",
                 "gamma_near_zero"]
METRICS: tuple[str, ...] = get_args(Metric)
Verdict = Literal["met", "missed", "not run"]


class Expectation(BaseModel):
    """One expected range of one metric over the trials a selector picks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str  # the selector as written in the spec
    selector: dict[str, Any]  # dotted trial-config key -> value
    metric: Metric
    low: float
    high: float
    source: str = ""

    def matches(self, config: Mapping[str, Any]) -> bool:
        """Whether a flat (dotted-key) trial config or results-table row is selected.

        >>> e = parse_expectations({"regime=bn, lr=0.1": {"test_accuracy": [0, 1]}})[0]
        >>> e.matches({"regime": "bn", "lr": 0.1000000001, "seed": 3}), e.matches({"regime": "all", "lr": 0.1})
        (True, False)
        """
        return all(k in config and _same(config[k], v) for k, v in self.selector.items())

    def verdict(self, mean: float | None) -> Verdict:
        """met / missed for a measured mean, not run for none (or NaN)."""
        if mean is None or not math.isfinite(mean):
            return "not run"
        return "met" if self.low <= mean <= self.high else "missed"


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return bool(a) == bool(b) and type(a) is type(b)
    if isinstance(b, (int, float)) and isinstance(a, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    try:
        return bool(a == b) or str(a) == str(b)
    except (TypeError, ValueError):
        return False


def selector_keys() -> tuple[str, ...]:
    """Every dotted key a selector may name: trial-config keys, ``seed`` and ``lr_schedule.*``."""
    keys = ["seed", *(k for k in config_keys() if k != "seed")]
    return tuple(keys)


def scalar(text: str) -> Any:
    """A selector value: integer, number, true/false, null, else the text itself.

    >>> scalar("110"), scalar("1e-3"), scalar("true"), scalar("bn"), scalar(" 'x y' ")
    (110, 0.001, True, 'bn', 'x y')
    """
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~"):  # (not "none": a regime)
        return None
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def _key(where: str, label: str, *rest: str) -> str:
    return ".".join([where, f'"{label}"', *rest])


def _parse_selector(label: Any, where: str) -> dict[str, Any]:
    if not isinstance(label, str) or not label.strip():
        raise ConfigError(where, label, 'a selector string such as "regime=bn, model.depth=110"')
    allowed = selector_keys()
    selector: dict[str, Any] = {}
    for part in label.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise ConfigError(_key(where, label), part.strip(), "comma-separated key=value pairs")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1) or [k for k in allowed if k.endswith("." + key)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(_key(where, label), key, f"a trial-config key{hint}: " + ", ".join(allowed))
        if key in selector:
            raise ConfigError(_key(where, label), key, "each key once")
        selector[key] = scalar(value)
    checked = {k: v for k, v in selector.items() if k != "seed"
               and not (k.startswith("lr_schedule.") and k != "lr_schedule.type")}
    if "lr_schedule.type" in checked:
        checked["lr_schedule"] = {"type": checked.pop("lr_schedule.type")}
    try:  # values a trial can have: a regime, a valid depth for the architecture, ...
        TrialConfig.from_dict(checked)
    except ConfigError as e:
        raise ConfigError(_key(where, label), e.received, e.allowed) from None
    return selector


def _range(value: Any, key: str) -> tuple[float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
          and value[0] <= value[1])
    if not ok:
        raise ConfigError(key, value, "[low, high], two finite numbers with low <= high")
    return float(value[0]), float(value[1])


def _parse(mapping: Any, where: str, problems: list[ConfigError]) -> list[Expectation]:
    if mapping is None:
        return []
    if not isinstance(mapping, Mapping):
        problems.append(ConfigError(where, mapping, 'a mapping of selector -> {metric: [low, high], source: ...}'))
        return []
    out: list[Expectation] = []
    for label, entry in mapping.items():
        try:
            selector = _parse_selector(label, where)
        except ConfigError as e:
            problems.append(e)
            continue
        if not isinstance(entry, Mapping) or not entry:
            problems.append(ConfigError(_key(where, label), entry, "a mapping {metric: [low, high], source: text}"))
            continue
        source = entry.get("source", "")
        if not isinstance(source, str):
            problems.append(ConfigError(_key(where, label, "source"), source, "text"))
            source = ""
        metrics = [k for k in entry if k != "source"]
        if not metrics:
            problems.append(ConfigError(_key(where, label), dict(entry), "at least one metric: " + ", ".join(METRICS)))
        for m in metrics:
            if m not in METRICS:
                problems.append(ConfigError(_key(where, label, str(m)), m, "a metric: " + ", ".join(METRICS)
                                            + ", or source"))
                continue
            try:
                low, high = _range(entry[m], _key(where, label, m))
            except ConfigError as e:
                problems.append(e)
                continue
            out.append(Expectation(label=label, selector=selector, metric=m, low=low, high=high, source=source))
    return out


def expectation_problems(mapping: Any, *, where: str = "expect") -> list[ConfigError]:
    """Every problem of an ``expect:`` mapping at once (for the spec loader's all-errors report)."""
    problems: list[ConfigError] = []
    _parse(mapping, where, problems)
    return problems


def parse_expectations(mapping: Any, *, where: str = "expect") -> list[Expectation]:
    """The expectations of an ``expect:`` mapping (None: none); the first problem raises ``ConfigError``
    naming its key, e.g. ``expect."regime=bn".test_accuracy: expected [low, high] ...``."""
    problems: list[ConfigError] = []
    out = _parse(mapping, where, problems)
    if problems:
        raise problems[0]
    return out
