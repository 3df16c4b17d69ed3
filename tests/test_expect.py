"""``bnsweep.spec.expect``: the ``expect:`` section of a spec — selectors of trial-config keys, metric
ranges, sources — and the problems it reports, each naming its key."""

from __future__ import annotations

import pytest

from bnsweep.spec.errors import ConfigError
from bnsweep.spec.expect import METRICS, Expectation, expectation_problems, parse_expectations, selector_keys


def test_a_section_with_several_entries_and_metrics():
    got = parse_expectations({
        "regime=bn, model.depth=110": {"test_accuracy": [0.66, 0.73], "source": "paper §4: 69.7%"},
        "regime=bn, model.depth=110, optimizer.name=sgd": {"test_accuracy": [0.6, 0.8],
                                                            "gamma_near_zero": [0.2, 0.5]},
        "model.arch=idiomatic_bottleneck, model.depth=20, regime=all, lr=0.01": {"val_accuracy_best": [0, 1]},
        "lr_schedule.type=cosine, lr_schedule.warmup_epochs=5, data.augment=notebook": {"test_loss": [0, 3]},
    })
    assert [e.metric for e in got] == ["test_accuracy", "test_accuracy", "gamma_near_zero", "val_accuracy_best",
                                       "test_loss"]
    first = got[0]
    assert isinstance(first, Expectation) and first.source == "paper §4: 69.7%"
    assert first.selector == {"regime": "bn", "model.depth": 110} and (first.low, first.high) == (0.66, 0.73)
    assert got[3].selector["lr"] == 0.01 and got[4].selector["lr_schedule.warmup_epochs"] == 5
    assert first.matches({"regime": "bn", "model.depth": 110, "seed": 4})
    assert not first.matches({"regime": "bn", "model.depth": 56}) and not first.matches({"regime": "bn"})
    assert (first.verdict(0.66), first.verdict(0.73), first.verdict(0.6599), first.verdict(float("nan"))) == (
        "met", "met", "missed", "not run")
    with pytest.raises(ValueError):  # frozen pydantic model
        first.low = 0.0  # type: ignore[misc]
    assert parse_expectations(None) == [] and parse_expectations({}) == []


@pytest.mark.parametrize(("mapping", "key", "words"), [
    ({"regime=bn": {"test_accuracy": [0.7, 0.6]}}, 'expect."regime=bn".test_accuracy', "low <= high"),
    ({"regime=bn": {"test_accuracy": 0.7}}, 'expect."regime=bn".test_accuracy', "[low, high]"),
    ({"regime=bn": {"test_accuracy": [0.6, float("inf")]}}, 'expect."regime=bn".test_accuracy', "finite"),
    ({"regime=bn": {"accuracy": [0.6, 0.7]}}, 'expect."regime=bn".accuracy', "a metric: test_accuracy"),
    ({"regime=bn": {"test_accuracy": [0.6, 0.7], "source": 3}}, 'expect."regime=bn".source', "text"),
    ({"regime=bn": {"source": "x"}}, 'expect."regime=bn"', "at least one metric"),
    ({"regime=bn": [0.6, 0.7]}, 'expect."regime=bn"', "a mapping"),
    ({"regime=bnn": {"test_accuracy": [0, 1]}}, 'expect."regime=bnn"', "one of all, bn"),
    ({"depth=20": {"test_accuracy": [0, 1]}}, 'expect."depth=20"', "did you mean 'model.depth'"),
    ({"model.depth=21": {"test_accuracy": [0, 1]}}, 'expect."model.depth=21"', "6·D+2"),
    ({"regime bn": {"test_accuracy": [0, 1]}}, 'expect."regime bn"', "key=value"),
    ({"regime=bn, regime=all": {"test_accuracy": [0, 1]}}, 'expect."regime=bn, regime=all"', "each key once"),
    ({"": {"test_accuracy": [0, 1]}}, "expect", "a selector string"),
    (["regime=bn"], "expect", "a mapping of selector"),
])
def test_problems_name_the_key_what_was_received_and_what_is_allowed(mapping, key, words):
    with pytest.raises(ConfigError) as e:
        parse_expectations(mapping)
    assert e.value.key == key and words in str(e.value), str(e.value)
    assert str(e.value).startswith(key + ": expected ") and "received" in str(e.value)


def test_every_problem_at_once_for_the_loader():
    problems = expectation_problems({"regime=bnn": {"test_accuracy": [0, 1]},
                                     "regime=bn": {"test_accuracy": [1, 0], "nope": [0, 1]},
                                     "regime=all": {"test_accuracy": [0.9, 0.95]}}, where="x.yaml: expect")
    assert [p.key for p in problems] == ['x.yaml: expect."regime=bnn"', 'x.yaml: expect."regime=bn".test_accuracy',
                                         'x.yaml: expect."regime=bn".nope']


def test_the_vocabulary():
    keys = selector_keys()
    assert {"regime", "model.depth", "model.arch", "seed", "lr", "batch_size", "optimizer.name",
            "lr_schedule.type"} <= set(keys)
    assert set(METRICS) >= {"test_accuracy", "val_accuracy_best", "gamma_near_zero"}
