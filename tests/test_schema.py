"""The JSON Schema of a spec (``bnsweep schema``): the committed copy is up to date, every shipped spec points its
editor at it and is valid under it (partial ``base/`` specs included), and it refuses what ``plan`` refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from bnsweep.spec.schema import SCHEMA_PATH, spec_schema, spec_schema_json
from bnsweep.spec.yaml_io import yaml_value

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "sweeps").glob("*.yaml")) + sorted((ROOT / "sweeps" / "base").glob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(spec_schema())


def test_the_schema_is_a_valid_json_schema_and_the_committed_copy_is_current():
    jsonschema.Draft202012Validator.check_schema(spec_schema())
    committed = (ROOT / SCHEMA_PATH).read_text(encoding="utf-8")
    assert committed == spec_schema_json(), "regenerate it: python -m bnsweep schema --out docs/sweep-spec.schema.json"


def test_the_schema_verb_prints_it_or_writes_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bnsweep", "schema"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == spec_schema_json() and out.stderr == ""
    target = tmp_path / "s.json"
    done = subprocess.run([sys.executable, "-m", "bnsweep", "schema", "--out", str(target)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and json.loads(target.read_text()) == spec_schema()
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # written whole: no temporary file left
    folder = tmp_path / "a-folder"
    folder.mkdir()
    bad = subprocess.run([sys.executable, "-m", "bnsweep", "schema", "--out", str(folder)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "a-folder" in bad.stderr, bad.stderr
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "s.json"]


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(ROOT / "sweeps")) for p in SPECS])
def test_every_shipped_spec_names_the_schema_first_and_is_valid_under_it(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema="), first
    assert (path.parent / first.split("=", 1)[1]).resolve() == (ROOT / SCHEMA_PATH).resolve()
    errors = [f"{list(e.path)}: {e.message}" for e in VALIDATOR.iter_errors(yaml_value(path.read_text()))]
    assert not errors, errors


@pytest.mark.parametrize("text", [
    "name: x\nmethd: tpe\n",                                         # unknown top-level key
    "name: bad name\n",                                              # not a run name
    "tracking: {mode: bogus}\n",                                     # not a mode
    "tracking: {wandb: false, tgas: [a]}\n",                         # unknown tracking key
    "fixed: {model: {depth: 8, widht: 2}}\n",                        # unknown model setting
    "fixed: {lr_schedule: {type: cosinus}}\n",                       # not a schedule kind
    "fixed: {optimizer.momentum: 1.5}\n",                            # out of range (dotted key)
    "fixed: {data: {split_seed: -1}}\n",
    "parameters: {lr: {distribution: normal, min: 0, max: 1}}\n",
    "parameters: {nosuch: {values: [1]}}\n",
    "resources: {cpu: 0}\n",
])
def test_the_schema_refuses_what_plan_refuses(text):
    assert list(VALIDATOR.iter_errors(yaml_value(text))), text


def test_a_partial_spec_for_include_is_valid():
    assert not list(VALIDATOR.iter_errors(yaml_value("fixed: {lr_schedule: {warmup_epochs: 2}}\nreplicates: 3\n")))
    assert not list(VALIDATOR.iter_errors(yaml_value("fixed: {lr_schedule: cosine, model.depth: 14}\n")))
