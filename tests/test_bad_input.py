"""Bad-input campaign (property-based, hypothesis): malformed specs, bad command-line arguments and bad
data files, through the real CLI (``bnsweep.cli.main`` in-process for speed, plus a few real subprocesses
to prove no traceback reaches a terminal).

Every bad input must end in: exit status 2, one line on stderr per problem, each naming where the problem
is (the spec file, ``<overrides>`` or ``bnsweep VERB:``), no traceback, nothing on stdout, and no run
directory created or changed. The campaigns are derandomized (the same cases on every run); the number of
cases each ran is printed at the end of the module (``-s``) and checked against a minimum.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import json
import math
import pickle
import re
import shutil
import string
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bnsweep.cli import main

ROOT = Path(__file__).resolve().parents[1]
COUNTS: collections.Counter = collections.Counter()  # cases run, per campaign
CAMPAIGN = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])

BASE: dict = {
    "name": "fuzz", "description": "a valid spec that the campaign breaks", "method": "random", "trials": 2,
    "replicates": 1, "seed": 0, "max_concurrent": 1, "retries": 0,
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "tracking": {"wandb": False},
    "fixed": {"model": {"depth": 8, "width": 1}, "epochs": 2, "batch_size": 32, "regime": "bn",
              "data": {"source": "synthetic", "synthetic_size": 64, "val_size": 16, "test_size": 16},
              "optimizer": {"name": "sgd", "momentum": 0.9}},
    "parameters": {"lr": {"distribution": "log_uniform", "min": 0.01, "max": 1.0},
                   "lr_schedule": {"one_of": {"constant": {}, "cosine": {"warmup_epochs": {"values": [0, 1]}}}}},
}
SECTION_KEYS = {  # the keys each mapping of BASE allows (anything else is unknown)
    (): ["name", "description", "include", "method", "metric", "trials", "replicates", "seed", "max_concurrent",
         "scheduler", "resources", "retries", "storage", "tracking", "fixed", "parameters"],
    ("metric",): ["name", "goal"],
    ("scheduler",): ["type", "grace_period", "reduction_factor"],
    ("resources",): ["cpu", "gpu", "tpu"],
    ("tracking",): ["wandb", "project", "entity", "mode", "group", "tags", "init_timeout"],
    ("fixed", "model"): ["depth", "width", "gamma_init", "num_classes"],
    ("fixed", "data"): ["source", "dataset", "path", "test_path", "train_size", "val_size", "test_size", "split_seed",
                        "augment", "normalize", "synthetic_size"],
    ("fixed", "optimizer"): ["name", "momentum", "nesterov", "weight_decay", "decay_bn", "beta_1", "beta_2",
                             "epsilon"],
}

# ------------------------------------------------------------------ strategies

junk_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
weird_text = st.one_of(
    junk_text,
    st.sampled_from(["", " ", "\t", "\n", "\x00", "\x1b[2J", "\u202e", "\u200b", "𝕏", "漢字", "🎉", "é", "-", ".",
                     "..", "../../etc/passwd", "~", "null", "1e999", "NaN", "${HOME}", "$(touch x)", "'", '"']),
)
huge = st.sampled_from([1e308, -1e308, 10**100, -(10**100), 2**63, 2**64 + 1, math.inf, -math.inf, math.nan,
                        1e-320, 123456789012345678901234567890])
not_a_number = st.one_of(weird_text, st.lists(st.integers(), max_size=2), st.dictionaries(junk_text, st.integers(),
                                                                                          min_size=1, max_size=1))
non_int = st.one_of(not_a_number, st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
                    huge.filter(lambda v: not isinstance(v, int)), st.booleans())
bad_pos_int = st.one_of(non_int, st.integers(max_value=0), st.just(None))


def _not_in(choices):
    return st.one_of(weird_text.filter(lambda t: t not in choices),
                     not_a_number.filter(lambda v: not isinstance(v, str)), st.integers(), st.just(None))


# path -> strategy of values that must be rejected
INVALID_VALUES: dict[tuple, st.SearchStrategy] = {
    ("name",): st.one_of(weird_text.filter(lambda t: not t or any(c not in string.ascii_letters + string.digits
                                                                   + "_.-" for c in t)),
                         st.lists(st.integers(), max_size=2), st.integers(), st.just(None)),
    ("method",): _not_in(["grid", "random", "tpe", "cmaes"]),
    ("trials",): st.one_of(bad_pos_int, st.integers(min_value=1_000_001), huge),
    ("replicates",): st.one_of(bad_pos_int, huge),
    # (null is the default written out: "as many as fill the machine"; saved specs hold it)
    ("max_concurrent",): st.one_of(non_int, st.integers(max_value=0), huge),
    ("retries",): st.one_of(non_int, st.integers(max_value=-1), st.integers(min_value=1001)),
    ("seed",): st.one_of(not_a_number, st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
                         st.sampled_from([math.inf, math.nan, 1e308])),
    ("metric", "name"): _not_in(["val_accuracy", "val_loss", "train_accuracy", "train_loss"]),
    ("metric", "goal"): _not_in(["maximize", "minimize"]),
    ("scheduler", "type"): _not_in(["asha", "median", "none"]),
    ("scheduler", "grace_period"): st.one_of(bad_pos_int, huge),
    ("resources", "cpu"): st.one_of(not_a_number, st.floats(max_value=-1e-9), st.sampled_from([math.nan, math.inf])),
    ("resources", "gpu"): st.one_of(not_a_number, st.floats(max_value=-1e-9), st.sampled_from([math.nan, math.inf])),
    ("tracking", "wandb"): st.one_of(weird_text, st.lists(st.booleans(), min_size=1, max_size=2), st.floats()),
    ("fixed", "model", "depth"): st.one_of(non_int, st.integers().filter(lambda d: d < 8 or (d - 2) % 6), huge),
    ("fixed", "model", "width"): st.one_of(bad_pos_int, huge),
    ("fixed", "epochs"): st.one_of(bad_pos_int, huge),
    ("fixed", "batch_size"): st.one_of(bad_pos_int, huge),
    ("fixed", "regime"): _not_in(["all", "bn", "bn_output", "bn_shortcut_output", "shortcut_output", "output", "none",
                                  "random_k"]),
    ("fixed", "data", "source"): _not_in(["cifar10", "npz", "dir", "synthetic"]),
    ("fixed", "data", "val_size"): st.one_of(non_int, st.integers(max_value=-1), huge),
    ("fixed", "optimizer", "name"): _not_in(["sgd", "adam", "adamw"]),
    ("fixed", "optimizer", "momentum"): st.one_of(not_a_number, st.floats(max_value=-1e-9),
                                                  st.floats(min_value=1.0001), st.sampled_from([math.nan, math.inf])),
    ("parameters", "lr", "min"): st.one_of(not_a_number, st.floats(max_value=0),
                                           st.sampled_from([math.nan, -math.inf])),
    ("parameters", "lr", "max"): st.one_of(not_a_number, st.floats(min_value=-1e9, max_value=0.0099),
                                           st.sampled_from([math.nan, math.inf])),
    ("parameters", "lr", "distribution"): _not_in(["uniform", "log_uniform", "int_uniform", "q_uniform",
                                                   "int_log_uniform"]),
    ("parameters", "lr_schedule", "one_of"): st.one_of(st.just({}), st.dictionaries(
        weird_text.filter(lambda t: t not in ("constant", "cosine", "step", "multistep", "warmup_cosine", "one_cycle",
                                              "exponential", "cosine_restarts", "linear_warmup", "ramp")),
        st.just({}), min_size=1, max_size=2), weird_text, st.integers()),
}


def _set(d: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(d)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


def _dump(d: dict) -> bytes:
    return yaml.safe_dump(d, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass")


@st.composite
def wrong_value(draw):
    path = draw(st.sampled_from(sorted(INVALID_VALUES)))
    value = draw(INVALID_VALUES[path])
    return "wrong value", _dump(_set(BASE, path, value))


@st.composite
def unknown_key(draw):
    section = draw(st.sampled_from(sorted(SECTION_KEYS)))
    allowed = set(SECTION_KEYS[section])
    key = draw(weird_text.filter(lambda k: k.strip() and k not in allowed and "." not in k))
    cur = copy.deepcopy(BASE)
    node = cur
    for k in section:
        node = node[k]
    node[key] = draw(st.one_of(st.integers(), junk_text, st.booleans()))
    return "unknown key", _dump(cur)


@st.composite
def unknown_parameter(draw):
    key = draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10).filter(
        lambda k: k not in ("model", "regime", "data", "optimizer", "lr", "lr_scaling", "lr_reference_batch",
                            "lr_schedule", "batch_size", "epochs", "seed", "backend", "jit_compile", "threads",
                            "steps_per_epoch", "strategy")))
    return "unknown parameter", _dump(_set(BASE, ("parameters", key), {"values": [1, 2]}))


@st.composite
def bad_range(draw):
    lo = draw(st.floats(min_value=1e-6, max_value=10))
    kind = draw(st.sampled_from(["min>max", "empty values", "int bounds", "log<=0"]))
    if kind == "min>max":
        p = {"distribution": draw(st.sampled_from(["uniform", "log_uniform"])), "min": lo * 2 + 1e-3, "max": lo}
    elif kind == "empty values":
        p = {"values": []}
    elif kind == "int bounds":
        p = {"distribution": "int_uniform", "min": 0.5, "max": 3.5}
        return "bad range", _dump(_set(BASE, ("parameters", "batch_size"), p))
    else:
        p = {"distribution": "log_uniform", "min": -lo, "max": lo}
    return "bad range", _dump(_set(BASE, ("parameters", "lr"), p))


@st.composite
def broken_yaml(draw):
    text = _dump(BASE).decode()
    how = draw(st.sampled_from(["truncate", "unbalance", "tab", "random", "tags", "anchors"]))
    if how == "truncate":  # cut inside the fixed/parameters mappings: the rest is missing or unclosed
        cut = draw(st.integers(min_value=0, max_value=len(text) - 1))
        text = text[:cut] + draw(st.sampled_from(["{", "[", ": [", '"', "'", "{a: ", "- [", "&x", "*"]))
    elif how == "unbalance":
        broken = draw(st.sampled_from(["parameters: {", "parameters: [", "parameters: ]"]))
        text = text.replace("parameters:", broken, 1)
    elif how == "tab":
        text = text.replace("  depth", "\tdepth", 1)
    elif how == "random":
        text = draw(st.text(st.characters(codec="utf-8"), max_size=200))
    elif how == "tags":
        tag = draw(st.sampled_from(["!!python/object/apply:os.system ['touch PWNED']", "!!python/name:os.system",
                                    "!!binary aGVsbG8=", "!custom 1", "!!set {a, b}", "!!timestamp 2001-12-14"]))
        text = text.replace("trials: 2", f"trials: {tag}", 1)
    else:
        text = "a: &a [*a, *a]\n" + text
    return "broken yaml", text.encode("utf-8", "surrogatepass")


degenerate = st.one_of(
    st.sampled_from([b"", b" ", b"\n\n", b"---", b"...", b"# only a comment\n", b"null", b"~", b"[]", b"{}", b"42",
                     b"'just a string'", b"\xef\xbb\xbf", b"\x00\x00", b"- name: x\n", b"name: x\n"]),
    st.binary(max_size=300),
).map(lambda b: ("degenerate / empty / binary", b))


@st.composite
def huge_numbers(draw):
    path = draw(st.sampled_from([("trials",), ("replicates",), ("max_concurrent",), ("fixed", "epochs"),
                                 ("fixed", "batch_size"), ("fixed", "model", "width"), ("parameters", "lr", "max"),
                                 ("scheduler", "grace_period"), ("fixed", "data", "val_size"),
                                 ("fixed", "model", "depth"), ("fixed", "model", "num_classes"),
                                 ("fixed", "lr_reference_batch"), ("parameters", "lr", "min")]))
    value = draw(st.sampled_from([10**100, 2**64, 1e308, math.inf, math.nan, -1e308]))
    text = _dump(_set(BASE, path, value)).decode()
    if isinstance(value, int) and value > 1e300 and draw(st.booleans()):
        text = text.replace(str(value), "1" + "0" * 400)  # an integer literal of 401 digits
    return "huge number", text.encode()


@st.composite
def unicode_mess(draw):
    d = copy.deepcopy(BASE)
    where = draw(st.sampled_from(["name", "method", "key", "regime", "description+name"]))
    u = draw(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=10).filter(
        lambda t: any(ord(c) > 127 for c in t) or any(not c.isprintable() for c in t)))
    if where == "key":
        d["fixed"][u] = 1
    elif where == "description+name":
        d["description"], d["name"] = u, u
    elif where == "regime":
        d["fixed"]["regime"] = u
    else:
        d[where] = u
    blob = _dump(d)
    if draw(st.booleans()):  # and sometimes bytes that are not UTF-8 at all
        blob = blob.replace(b"fuzz", draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])), 1)
    return "unicode", blob


bad_specs = st.one_of(wrong_value(), unknown_key(), unknown_parameter(), bad_range(), broken_yaml(), degenerate,
                      huge_numbers(), unicode_mess())

# ------------------------------------------------------------------ checks


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_clean_refusal(rc: int, out: str, err: str, *, names: tuple[str, ...], what: str) -> None:
    assert rc == 2, f"{what}: exit {rc}\nstdout: {out[-500:]}\nstderr: {err[-1500:]}"
    assert "Traceback" not in err + out, f"{what}: {err}"
    assert out == "", f"{what}: printed on stdout: {out[:300]}"
    lines = err.rstrip("\n").split("\n")
    assert lines and all(line.strip() for line in lines), f"{what}: {err!r}"
    for line in lines:
        assert line.startswith(names), f"{what}: a line that names no file or command: {line!r}\n{err}"
        assert all(c.isprintable() or c == " " for c in line), f"{what}: unescaped control character: {line!r}"


def _tree(d: Path) -> dict[str, str]:
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def work():
    d = Path(tempfile.mkdtemp(prefix="bnsweep-bad-input-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def existing_run(work):
    """A run directory as `launch` leaves it (spec.yaml, sweep.json, a finished replicate's record): bad
    commands aimed at it must not change a byte."""
    from bnsweep.spec.sweep_spec import load_spec
    from bnsweep.sweep.driver import LaunchOptions, _write_run_files

    spec_path = work / "existing.yaml"
    spec_path.write_bytes(_dump({**BASE, "name": "existing"}))
    run_dir = work / "existing-run"
    _write_run_files(run_dir, load_spec(spec_path), {}, LaunchOptions(run_dir=run_dir))
    rec = run_dir / "trials" / "t0" / "seed-0" / "result.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"status": "completed", "config": {"seed": 0}}))
    return run_dir


def test_the_base_spec_is_valid(work, capsys):
    p = work / "base.yaml"
    p.write_bytes(_dump(BASE))
    rc, _, err = _run(capsys, ["plan", str(p), "--no-probe"])
    assert rc == 0 and err == "", err


# ------------------------------------------------------------------ malformed specs


@settings(CAMPAIGN, max_examples=1000)
@given(case=bad_specs)
def test_malformed_specs_are_refused_with_one_line_per_problem(work, capsys, case):
    kind, blob = case
    d = Path(tempfile.mkdtemp(dir=work))
    spec = d / "spec.yaml"
    spec.write_bytes(blob)
    run_dir = d / "run"
    for verb in (["plan", str(spec), "--no-probe"], ["launch", str(spec), "--run-dir", str(run_dir), "--no-dashboard"]):
        rc, out, err = _run(capsys, verb)
        if rc == 0 and kind in ("broken yaml", "degenerate / empty / binary"):
            # a corruption that happens to leave a valid spec (e.g. a truncation at the end of a comment)
            assert verb[0] == "plan" and err == ""
            COUNTS[f"spec: {kind} (valid after all)"] += 1
            break
        _assert_clean_refusal(rc, out, err, names=(str(spec), "<overrides>", f"bnsweep {verb[0]}:"),
                              what=f"{kind}: {blob[:300]!r}")
        assert not run_dir.exists(), f"{kind}: launch created the run directory"
    else:
        COUNTS[f"spec: {kind}"] += 1
    assert not (d / "PWNED").exists() and not Path("PWNED").exists()
    shutil.rmtree(d)


# ------------------------------------------------------------------ bad command-line arguments


@settings(CAMPAIGN, max_examples=300)
@given(tokens=st.lists(st.one_of(weird_text, st.sampled_from(
    ["plan", "launch", "resume", "status", "export", "plot", "--set", "--data", "--trials", "--epochs", "-h?",
     "--format", "--kind", "--run-dir", "--storage", "--address", "--num-cpus", "--dashboard-port", "--bogus"])),
    max_size=6))
def test_random_argument_lists_never_crash(work, capsys, tokens):
    assume("-h" not in tokens and "--help" not in tokens)
    assume(not any(t.startswith("-") and "--help".startswith(t) and len(t) > 2 for t in tokens))  # --h, --he...
    rc, out, err = _run(capsys, tokens)
    _assert_clean_refusal(rc, out, err, names=("bnsweep", *[t for t in tokens if t]), what=repr(tokens))
    COUNTS["cli: random argument lists"] += 1


def _not_a_valid_count(text: str) -> bool:
    """weird_text can draw "0" or "5": a number ≥ 0 is a valid value for some of these flags."""
    try:
        return not float(text) >= 0
    except ValueError:
        return True


_bad_number_text = weird_text.filter(_not_a_valid_count)

PLAN_FLAGS = {
    "--trials": st.one_of(st.integers(max_value=0), _bad_number_text, st.floats().filter(
        lambda f: not f >= 1).map(str)),
    "--replicates": st.one_of(st.integers(max_value=0), _bad_number_text),
    "--max-concurrent": st.one_of(st.integers(max_value=0), _bad_number_text),
    "--epochs": st.one_of(st.integers(max_value=0), _bad_number_text, st.just("1e3")),
    "--cpus-per-trial": st.one_of(st.floats(max_value=-1e-6).map(str), _bad_number_text, st.just("nan"),
                                  st.just("-inf")),
    "--gpus-per-trial": st.one_of(st.floats(max_value=-1e-6).map(str), _bad_number_text, st.just("nan")),
    "--set": st.one_of(weird_text.filter(lambda t: "=" not in t),
                       st.tuples(st.sampled_from(["model.depth", "lr", "epochs", "nosuch.key", "optimizer.name",
                                                  "data.val_size", "regime", "", "model"]),
                                 st.one_of(weird_text, st.sampled_from(["[", "{a: ", "!!python/object/apply:os.system "
                                                                       "['touch PWNED']", "-1", "0", "abc", "1e400"])))
                       .map(lambda kv: f"{kv[0]}={kv[1]}")),
    "--data": st.one_of(weird_text.filter(lambda t: t.strip() not in ("", ".", "..", "~")),
                        st.sampled_from(["nonexistent.npz", "/dev/null", "spec.yaml", "/etc/passwd", "x.NPZ"])),
}


@settings(CAMPAIGN, max_examples=400)
@given(flag=st.sampled_from(sorted(PLAN_FLAGS)), data=st.data(), verb=st.sampled_from(["plan", "launch"]))
def test_bad_spec_arguments_are_refused(work, capsys, flag, data, verb):
    value = str(data.draw(PLAN_FLAGS[flag]))
    spec = work / "base.yaml"
    spec.write_bytes(_dump(BASE))
    run_dir = Path(tempfile.mkdtemp(dir=work)) / "run"
    plan = ["plan", str(spec), flag, value, "--no-probe"]
    rc, out, err = _run(capsys, plan)
    if rc == 0:  # a drawn value that is valid after all (e.g. --set regime=all, --gpus-per-trial 0)
        assert all(line.startswith("warning: ") for line in err.splitlines()), (plan, err)  # (--set epochs=1)
        COUNTS["cli: spec arguments (valid after all)"] += 1
        return  # (and never launched: that would run a sweep)
    argv = plan if verb == "plan" else ["launch", str(spec), flag, value, "--run-dir", str(run_dir)]
    if verb == "launch":
        rc, out, err = _run(capsys, argv)
    _assert_clean_refusal(rc, out, err, names=("bnsweep", "<overrides>", str(spec)), what=repr(argv))
    assert not run_dir.exists()
    assert not Path("PWNED").exists() and not (work / "PWNED").exists()
    COUNTS["cli: spec arguments"] += 1


RAY_FLAGS = {
    "--dashboard-port": st.one_of(st.integers(max_value=0), st.integers(min_value=65536)).map(str),
    "--num-cpus": st.integers(max_value=0).map(str),
    "--address": st.one_of(weird_text.filter(lambda t: t.strip() and t != "auto" and not t.startswith("-")),
                           st.sampled_from(["127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:99999", "[::1]:1", ":6379",
                                            "localhost:", "ray://127.0.0.1:1", "10.0.0.1:abc"])),
    "--dashboard-host": st.sampled_from(["", " ", "a b", "\t", "host\n"]),
    "--storage": st.one_of(weird_text.filter(lambda t: t.strip() and not t.startswith("-")),
                           st.sampled_from(["bogus://x", "postgresql://u:s3cret@127.0.0.1:9/db", "mysql://a:b@c/d",
                                            "sqlite:////nonexistent/dir/x.db", "://", "http://x"])),
}


@settings(CAMPAIGN, max_examples=200)
@given(flag=st.sampled_from(sorted(RAY_FLAGS)), data=st.data(), verb=st.sampled_from(["launch", "resume"]))
def test_bad_ray_arguments_are_refused_and_leave_run_directories_alone(work, capsys, existing_run, flag, data, verb):
    value = data.draw(RAY_FLAGS[flag])
    before = _tree(existing_run)
    new_run = Path(tempfile.mkdtemp(dir=work)) / "run"
    if verb == "launch":
        argv = ["launch", str(work / "base.yaml"), "--run-dir", str(new_run), flag, value]
        (work / "base.yaml").write_bytes(_dump(BASE))
    else:
        argv = ["resume", str(existing_run), flag, value]
    rc, out, err = _run(capsys, argv)
    _assert_clean_refusal(rc, out, err, names=("bnsweep",), what=repr(argv))
    assert "s3cret" not in err
    assert _tree(existing_run) == before and not (existing_run / ".lock").exists()
    assert not new_run.exists()
    COUNTS["cli: ray/storage arguments"] += 1


@pytest.mark.parametrize("argv", [
    ["status", "{work}/nowhere"], ["status", "{work}"], ["resume", "{work}/nowhere"], ["resume", "{work}"],
    ["export", "{work}/nowhere"], ["export", "{existing}", "--group-by", "no_such_column"],
    ["export", "{existing}", "--metric", "no_such_metric"], ["export", "{existing}", "--format", "parquet"],
    ["plot", "{work}/nowhere", "--kind", "gamma"], ["plot", "{existing}", "--kind", "gamma"],
    ["plan", "{work}/nowhere.yaml"], ["plan", "{work}"], ["launch", "{work}/nowhere.yaml"],
    ["launch", "{existing}/spec.yaml", "--run-dir", "{existing}"],  # a run directory that holds a sweep
    ["launch", "{work}/base.yaml", "--run-dir", "/proc/bnsweep-cannot-be-here"],
])
def test_bad_paths_and_run_directories_are_refused(work, existing_run, capsys, argv):
    (work / "base.yaml").write_bytes(_dump(BASE))
    argv = [a.format(work=work, existing=existing_run) for a in argv]
    before = _tree(existing_run)
    rc, out, err = _run(capsys, argv)
    _assert_clean_refusal(rc, out, err, names=("bnsweep", str(work)), what=repr(argv))
    assert _tree(existing_run) == before
    COUNTS["cli: bad paths"] += 1


# ------------------------------------------------------------------ bad data files

DATA_SPEC = {**BASE, "name": "data", "fixed": {**BASE["fixed"], "data": {"val_size": 4, "test_size": 4}}}


def _valid_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n).astype(np.int64)}


def _npz_bytes(arrays: dict, allow_objects: bool = False) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(tempfile.gettempdir()) / "bnsweep-PWNED-by-pickle",))


@st.composite
def bad_npz(draw):
    n = draw(st.integers(min_value=12, max_value=40))
    arrays = _valid_arrays(n, draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["shape", "dtype", "labels out of range", "label dtype", "length mismatch",
                                 "missing array", "truncated", "corrupted", "too few images", "bad test split",
                                 "object array", "not a zip", "pickle renamed"]))
    if kind == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=1, max_size=5)))
        assume(len(shape) != 4 or shape[1:] != (32, 32, 3))
        arrays["x_train"] = np.zeros(shape, np.uint8)
    elif kind == "dtype":
        dt = draw(st.sampled_from(["float32", "float64", "int16", "int64", "bool", "uint16", "int8", "float16"]))
        arrays["x_train"] = arrays["x_train"].astype(dt)
    elif kind == "labels out of range":
        i = draw(st.integers(0, n - 1))
        arrays["y_train"][i] = draw(st.one_of(st.integers(10, 2**40), st.integers(-(2**40), -1)))
    elif kind == "label dtype":
        dt = draw(st.sampled_from(["float32", "float64", "bool", "complex64", "<U2", "datetime64[s]"]))
        arrays["y_train"] = arrays["y_train"].astype(dt)
    elif kind == "length mismatch":
        arrays["y_train"] = arrays["y_train"][: draw(st.integers(0, n - 1))]
    elif kind == "missing array":
        del arrays[draw(st.sampled_from(["x_train", "y_train"]))]
        if draw(st.booleans()):
            arrays["images"] = np.zeros((n, 32, 32, 3), np.uint8)
    elif kind == "too few images":
        arrays = _valid_arrays(draw(st.integers(0, 8)), 0)
    elif kind == "bad test split":
        arrays["x_test"] = np.zeros((5, 32, 32, draw(st.sampled_from([1, 4]))), np.uint8)
        arrays["y_test"] = np.zeros(5, np.int64)
    elif kind == "object array":
        arrays["x_train"] = np.array([_Evil()] * n, dtype=object)
    blob = _npz_bytes(arrays)
    if kind == "truncated":
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif kind == "corrupted":
        blob = bytearray(blob)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(blob) - 1))
            blob[i] = (blob[i] + draw(st.integers(1, 255))) % 256
        blob = bytes(blob)
    elif kind == "not a zip":
        blob = draw(st.one_of(st.binary(max_size=200), st.just(b"\x93NUMPY" + b"\x00" * 50)))
    elif kind == "pickle renamed":
        blob = pickle.dumps({"x_train": _Evil()})
    return kind, blob


def _structurally_valid(path: Path) -> bool:
    """An independent check of the npz contract (for cases a random corruption left valid)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x_train"], f["y_train"]
    except Exception:
        return False
    return (x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (32, 32, 3) and np.issubdtype(y.dtype, np.integer)
            and y.reshape(-1).shape[0] == len(x) and len(x) >= 9 and (len(y) == 0 or (y.min() >= 0 and y.max() < 10)))


@settings(CAMPAIGN, max_examples=300)
@given(case=bad_npz())
def test_bad_npz_data_is_refused_before_anything_is_written(work, capsys, monkeypatch, case):
    from bnsweep.sweep import driver as search

    kind, blob = case
    accepted: list[bool] = []

    def fake_run(run_dir, spec, **kw):  # reached only when the data loaded: no Ray, no training here
        accepted.append(True)
        return search.Outcome(run_dir=run_dir, finished=True, counts={}, best=None)

    monkeypatch.setattr(search, "_run", fake_run)
    d = Path(tempfile.mkdtemp(dir=work))
    spec, data, run_dir = d / "spec.yaml", d / "cifar subset.npz", d / "run"
    spec.write_bytes(_dump(DATA_SPEC))
    data.write_bytes(blob)
    rc, out, err = _run(capsys, ["launch", str(spec), "--data", str(data), "--run-dir", str(run_dir), "--quiet"])
    if accepted:  # only a file that really is valid may pass
        assert rc == 0 and _structurally_valid(data), f"{kind}: accepted an invalid file"
        COUNTS["data: npz (valid after all)"] += 1
    else:
        _assert_clean_refusal(rc, out, err, names=("bnsweep launch:",), what=f"{kind}")
        assert str(data) in err or "data." in err, err
        COUNTS[f"data: npz {kind}"] += 1
    assert not run_dir.exists()
    assert not (Path(tempfile.gettempdir()) / "bnsweep-PWNED-by-pickle").exists()
    shutil.rmtree(d)


CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


@settings(CAMPAIGN, max_examples=60)
@given(files=st.dictionaries(st.sampled_from(CIFAR_FILES), st.one_of(
    st.binary(max_size=100), st.just(pickle.dumps({"data": _Evil(), "labels": [1]})),
    st.builds(lambda n: pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}),
              st.integers(0, 20)))))
def test_cifar_pickles_failing_their_checksum_are_refused_unopened(work, capsys, files):
    d = Path(tempfile.mkdtemp(dir=work))
    cifar = d / "cifar-10-batches-py"
    cifar.mkdir()
    for name, blob in files.items():
        (cifar / name).write_bytes(blob)
    spec, run_dir = d / "spec.yaml", d / "run"
    spec.write_bytes(_dump(DATA_SPEC))
    rc, out, err = _run(capsys, ["launch", str(spec), "--data", str(cifar), "--run-dir", str(run_dir)])
    _assert_clean_refusal(rc, out, err, names=("bnsweep launch:",), what=str(sorted(files)))
    assert "checksum mismatch" in err or "missing" in err, err
    assert not run_dir.exists()
    assert not (Path(tempfile.gettempdir()) / "bnsweep-PWNED-by-pickle").exists()
    COUNTS["data: cifar directory"] += 1
    shutil.rmtree(d)


# ------------------------------------------------------------------ real processes: nothing reaches a terminal


@pytest.mark.parametrize("argv", [
    ["plan", "{d}/bad.yaml"],
    ["launch", "{d}/good.yaml", "--data", "{d}/truncated.npz", "--run-dir", "{d}/run"],
    ["launch", "{d}/good.yaml", "--set", "epochs=!!python/object/apply:os.system ['touch {d}/PWNED']"],
    ["resume", "{d}/nowhere"],
    ["launch", "{d}/good.yaml", "--dashboard-port", "70000"],
    ["launch"],
    ["frobnicate", "--x"],
])
def test_real_processes_print_one_line_and_no_traceback(tmp_path, argv):
    (tmp_path / "bad.yaml").write_text("name: x\nmethod: tpee\ntrials: -1\nfixed: {model: {depth: 21}\n")
    (tmp_path / "good.yaml").write_bytes(_dump(DATA_SPEC))
    (tmp_path / "truncated.npz").write_bytes(_npz_bytes(_valid_arrays(20, 0))[:1000])
    argv = [a.format(d=tmp_path) for a in argv]
    res = subprocess.run([sys.executable, "-m", "bnsweep", *argv], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stdout == "" and 1 <= len(res.stderr.strip().splitlines()) <= 3, res.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()
    COUNTS["subprocess"] += 1


@pytest.mark.parametrize("key", ["epochs", "batch_size", "model.width", "model.depth", "data.val_size",
                                 "data.train_size", "steps_per_epoch", "threads", "data.synthetic_size",
                                 "model.num_classes", "lr_reference_batch"])
@pytest.mark.parametrize("value", [10**30, 6 * 10**9 + 2])  # (the second is a valid 6·D+2 depth)
def test_huge_integers_in_the_trial_config_are_refused(work, capsys, key, value):
    """Every integer of the trial config has an upper bound: an extra digit is refused by `plan` at once,
    with the bound, instead of `plan` hanging on a 10^30-layer network."""
    spec = work / "base.yaml"
    spec.write_bytes(_dump(BASE))
    rc, out, err = _run(capsys, ["plan", str(spec), "--no-probe", "--set", f"{key}={value}"])
    _assert_clean_refusal(rc, out, err, names=("<overrides>", "bnsweep"), what=key)
    assert key in err and re.search(r"from \d+ to [\d,]+,|<= [\d,]+", err), err  # the bound, in the message
    COUNTS["cli: huge trial-config integers"] += 1


def test_zz_campaign_counts():
    """How many cases ran (printed with -s), and that each campaign really ran."""
    total = sum(COUNTS.values())
    print(f"\nbad-input campaign: {total} cases")
    for k, v in sorted(COUNTS.items()):
        print(f"  {v:5d}  {k}")
    if not COUNTS:
        pytest.skip("run with the campaigns above (this test only reports their counts)")
    assert sum(v for k, v in COUNTS.items() if k.startswith("spec:")) >= 800
    assert sum(v for k, v in COUNTS.items() if k.startswith("cli:")) >= 700
    assert sum(v for k, v in COUNTS.items() if k.startswith("data:")) >= 300
