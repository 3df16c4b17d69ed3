"""bnsweep.store on a real run directory (the session's ``tiny_run_dir``: really trained ResNet-8s)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnsweep.engine.regimes import account
from bnsweep.spec.config import TrialConfig, config_hash, flatten
from bnsweep.store.columns import COLUMNS, HISTORY_COLUMNS, STR, columns_markdown
from bnsweep.store.records import load_trained_net, load_weights
from bnsweep.store.table import _atomic_write, load_history, load_results, read_table, write_results_table


@pytest.fixture
def run_copy(tiny_run_dir, tmp_path) -> Path:
    """A private copy of the tiny run directory that a test may change."""
    return Path(shutil.copytree(tiny_run_dir.run_dir, tmp_path / "tiny"))


def _expected_rows(tiny):
    return {(tid, s) for tid, (_, seeds, _) in tiny.trials.items() for s in seeds}


def test_one_row_per_replicate_with_every_hyperparameter(tiny_run_dir):
    df = load_results(tiny_run_dir.run_dir)
    assert len(df) == len(_expected_rows(tiny_run_dir))
    assert set(zip(df["trial_id"], df["seed"].astype(int), strict=True)) == _expected_rows(tiny_run_dir)
    assert list(df[["trial_id", "seed"]].itertuples(index=False)) == sorted(
        df[["trial_id", "seed"]].itertuples(index=False))
    hyper = [k for k in flatten(TrialConfig().to_dict()) if k not in ("lr_schedule", "seed")]
    for col in [*hyper, "lr_schedule.type", "lr_schedule.milestones", "lr_schedule.warmup_epochs", "regime",
                "depth", "width", "params_total", "params_trainable", "params_bn", "test_accuracy",
                "val_accuracy_final", "val_accuracy_best", "status", "spec_hash", "versions", "git_commit"]:
        assert col in df.columns, col
    for _, row in df.iterrows():
        cfg, _, expected_status = tiny_run_dir.trials[row["trial_id"]]
        tc = TrialConfig.from_dict({**cfg, "seed": int(row["seed"])})
        assert row["status"] == expected_status
        assert row["regime"] == tc.regime and row["model.depth"] == row["depth"] == tc.model.depth
        assert row["model.width"] == row["width"] == tc.model.width
        assert row["batch_size"] == tc.batch_size and row["lr"] == pytest.approx(tc.lr)
        assert row["lr_schedule.type"] == tc.lr_schedule.type
        assert row["optimizer.momentum"] == pytest.approx(0.9)
        assert row["config_hash"] == config_hash(tc)
        assert row["group_hash"] == config_hash(tc, ignore=("seed",))
        assert TrialConfig.from_dict(json.loads(row["config_json"])) == tc
        acc = account(tc.model, tc.regime)
        assert (row["params_total"], row["params_trainable"], row["params_bn"], row["params_output"]) == (
            acc.total, acc.trainable, acc.bn, acc.output)
        assert row["sweep"] == "tiny" and row["spec_hash"] == "0123456789ab"
        assert "keras=" in row["versions"] and row["path"] == f"trials/{row['trial_id']}/seed-{row['seed']}"
    # replicates of one configuration share group_hash, not config_hash
    t0 = df[df["trial_id"] == "t00_all_w1"]
    assert t0["group_hash"].nunique() == 1 and t0["config_hash"].nunique() == 2
    cosine = df[df["lr_schedule.type"] == "cosine"]
    assert (cosine["lr_schedule.warmup_epochs"] == 1).all() and cosine["lr_schedule.milestones"].isna().all()
    assert df.loc[df["trial_id"] == "t00_all_w1", "lr_schedule.milestones"].iloc[0] == "[0.5, 0.75]"
    # paper numbers the accounting is checked against (ResNet-8: D=1 -> BN γ/β = 224 + 448)
    assert set(df.loc[df["regime"] == "bn", "params_trainable"]) == {672, 1344}


def test_outcomes_and_metrics(tiny_run_dir):
    df = load_results(tiny_run_dir.run_dir).set_index(["trial_id", "seed"])
    done = df[df["status"] == "completed"]
    assert done["test_accuracy"].between(0, 1).all() and done["epochs_run"].eq(2).all()
    assert (done["test_is_holdout"]).all() and (done["data_test"] == 32).all()
    assert done["accelerator"].str.startswith("cpu:").all() and (done["accelerator_backend"] == "tensorflow").all()
    assert done["finished_at"].notna().all() and done["reason"].isna().all()
    div = df.loc[("t05_all_lr1e8", 0)]
    assert div["status"] == "diverged" and "nan" in div["reason"].lower()
    assert pd.isna(div["test_accuracy"]) and div["epochs_run"] == 1


def test_params_and_weights_match_the_trained_network(tiny_run_dir):
    df = load_results(tiny_run_dir.run_dir)
    for trial_id in ("t00_all_w1", "t03_bn_w2"):
        row = df[(df["trial_id"] == trial_id) & (df["seed"] == 1)].iloc[0]
        d = tiny_run_dir.run_dir / row["path"]
        net = load_trained_net(d)
        assert net.count_params() == row["params_total"]
        weights = load_weights(d / "final_weights.npz")
        assert "stem_conv:kernel" in weights and "stem_bn:gamma" in weights
        np.testing.assert_array_equal(np.asarray(net.get_layer("stem_bn").gamma.numpy()), weights["stem_bn:gamma"])
        gammas = np.concatenate([v.ravel() for k, v in weights.items() if k.endswith(":gamma")])
        assert np.mean(np.abs(gammas) < 0.01) == pytest.approx(row["gamma_near_zero"])  # the *final* weights
        assert row["params_bn"] == gammas.size * 2


def test_load_trained_net_rejects_other_architectures(run_copy):
    d = run_copy / "trials" / "t00_all_w1" / "seed-0"
    rec = json.loads((d / "result.json").read_text())
    rec["config"]["model"]["width"] = 2
    (d / "result.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="does not match"):
        load_trained_net(d)
    (d / "final_weights.npz").unlink()
    with pytest.raises(FileNotFoundError):
        load_trained_net(d)


def test_result_json_record(tiny_run_dir):
    d = tiny_run_dir.run_dir / "trials" / "t01_bn_w1" / "seed-1"
    rec = json.loads((d / "result.json").read_text())
    for key in ("sweep", "trial_id", "replicate", "seed", "spec_hash", "git_commit", "versions", "started_at",
                "finished_at", "config", "config_hash", "status", "reason", "epochs_run", "final_val_accuracy",
                "best_val_accuracy", "best_epoch", "final_val_loss", "test_accuracy", "test_loss", "accounting",
                "gamma_near_zero", "wall_seconds", "images_per_sec", "accelerator", "data", "history"):
        assert key in rec, key
    assert (rec["trial_id"], rec["seed"], rec["replicate"]) == ("t01_bn_w1", 1, 1)
    assert [h["epoch"] for h in rec["history"]] == [1, 2]
    assert rec["final_weights"] == "final_weights.npz"
    leftovers = [p for p in tiny_run_dir.run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_running_replicate_from_checkpoint(tiny_run_dir):
    df = load_results(tiny_run_dir.run_dir)
    row = df[df["trial_id"] == "t06_bn_running"].iloc[0]
    state = json.loads((tiny_run_dir.run_dir / row["path"] / "checkpoint" / "state.json").read_text())
    assert row["status"] == "running" and row["epochs_run"] == 1 == state["epoch"]
    assert row["val_accuracy_final"] == pytest.approx(state["history"][-1]["val_accuracy"])
    assert row["config_hash"] == state["config_hash"]
    assert pd.isna(row["test_accuracy"]) and pd.isna(row["finished_at"])
    # hyperparameters and parameter counts come from started.json
    assert (row["model.width"], row["lr_schedule.type"], row["params_trainable"]) == (1, "multistep", 672)


def test_running_replicate_without_start_record_uses_a_sibling(run_copy):
    d = run_copy / "trials" / "t00_all_w1" / "seed-1"
    for name in ("result.json", "final_weights.npz", "started.json"):
        (d / name).unlink()
    # a replicate that never reached its first checkpoint is not in the table
    (run_copy / "trials" / "t09_new" / "seed-0").mkdir(parents=True)
    df = load_results(run_copy)
    row = df[(df["trial_id"] == "t00_all_w1") & (df["seed"] == 1)].iloc[0]
    state = json.loads((d / "checkpoint" / "state.json").read_text())
    assert row["status"] == "running" and row["epochs_run"] == 2
    assert row["config_hash"] == state["config_hash"]
    tc = TrialConfig.from_dict(json.loads(row["config_json"]))
    assert tc.seed == 1 and config_hash(tc) == state["config_hash"]  # the sibling's config, this seed
    assert row["replicate"] == 1  # seed - sweep.json seed_base
    assert "t09_new" not in set(df["trial_id"])


def test_failed_replicate(run_copy):
    d = run_copy / "trials" / "t06_bn_running" / "seed-0"
    (d / "failure.json").write_text(json.dumps({"reason": "out of memory: ResourceExhaustedError", "traceback": "",
                                                "at": "2026-11-27T01:00:00+00:00"}))
    os.utime(d / "checkpoint" / "state.json", (1, 1))  # the failure came after the last checkpoint
    row = load_results(run_copy).set_index("trial_id").loc["t06_bn_running"]
    assert row["status"] == "failed" and row["reason"].startswith("out of memory")
    assert row["epochs_run"] == 1 and row["finished_at"] == "2026-11-27T01:00:00+00:00"


def _expected_dtype(dtype: str) -> str:
    return STR if dtype == "str" else dtype


def test_documented_dtypes(tiny_run_dir):
    run_dir = tiny_run_dir.run_dir
    for df, cols in ((load_results(run_dir), COLUMNS), (load_history(run_dir), HISTORY_COLUMNS)):
        assert list(df.columns) == list(cols)
        for col, (dtype, _) in cols.items():
            assert str(df[col].dtype) == _expected_dtype(dtype), (col, df[col].dtype, dtype)
    empty = load_results(run_dir / "trials" / "nothing-here")
    assert len(empty) == 0 and list(empty.columns) == list(COLUMNS)
    assert all(str(empty[c].dtype) == _expected_dtype(t) for c, (t, _) in COLUMNS.items())


def test_written_tables_round_trip(tiny_run_dir):
    run_dir = tiny_run_dir.run_dir
    results, history = load_results(run_dir), load_history(run_dir)
    for name, df in (("results", results), ("history", history)):
        pd.testing.assert_frame_equal(read_table(run_dir / f"{name}.parquet"), df)
        pd.testing.assert_frame_equal(read_table(run_dir / f"{name}.csv"), df)
        # the Parquet file alone keeps the dtypes, for readers without bnsweep
        raw = pd.read_parquet(run_dir / f"{name}.parquet")
        assert [str(t) for t in raw.dtypes] == [str(t) for t in df.dtypes]


def test_a_trial_id_made_of_digits_reads_back_from_csv_as_written(run_copy):
    """Ray's trial ids are 8 hex digits; about 1 in 160 has no letter ("65889554", "00123456"), and a
    sweep whose every id is so must not come back with numbers (or "123456")."""
    trials = run_copy / "trials"
    ids = [f"{123456 + i:08d}" for i in range(len(list(trials.iterdir())))]
    for old, new in zip(sorted(p.name for p in trials.iterdir()), ids, strict=True):
        (trials / old).rename(trials / new)
    written = write_results_table(run_copy)
    assert set(written["trial_id"]) == set(ids)
    for name in ("results", "history"):
        back = read_table(run_copy / f"{name}.csv")
        assert set(back["trial_id"]) == set(ids) and back["trial_id"].map(type).eq(str).all()
        pd.testing.assert_frame_equal(back, read_table(run_copy / f"{name}.parquet"))


def test_history(tiny_run_dir):
    h = load_history(tiny_run_dir.run_dir)
    df = load_results(tiny_run_dir.run_dir)
    assert len(h) == int(df["epochs_run"].sum())
    assert not h.duplicated(["trial_id", "seed", "epoch"]).any()
    one = h[(h["trial_id"] == "t00_all_w1") & (h["seed"] == 0)]
    assert list(one["epoch"]) == [1, 2] and (one["regime"] == "all").all()
    assert list(one["lr"]) == pytest.approx([0.1, 0.01])  # multistep: ×0.1 at half of the 2 epochs
    assert one["config_hash"].iloc[0] == df.loc[(df["trial_id"] == "t00_all_w1") & (df["seed"] == 0),
                                                "config_hash"].iloc[0]
    running = h[h["trial_id"] == "t06_bn_running"]
    assert list(running["epoch"]) == [1] and (running["status"] == "running").all()
    assert h["images_per_sec"].gt(0).all() and h["seconds"].gt(0).all()


def test_write_is_atomic_and_survives_a_crashed_writer(run_copy):
    before = read_table(run_copy / "results.parquet")
    # a writer killed mid-write leaves its temporary file behind (pid 2**22+1 is not running here)
    stale = run_copy / f".results.parquet.{2**22 + 1}.tmp"
    stale.write_bytes(b"PAR1 half a parquet file")
    pd.testing.assert_frame_equal(read_table(run_copy / "results.parquet"), before)
    pd.testing.assert_frame_equal(load_results(run_copy), before)

    # a write that fails half-way leaves the previous table intact and no temporary file
    def half(f):
        f.write(b"PAR1 partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic_write(run_copy / "results.parquet", half)
    pd.testing.assert_frame_equal(read_table(run_copy / "results.parquet"), before)
    assert not list(run_copy.glob(f".results.parquet.{os.getpid()}.tmp"))

    table = write_results_table(run_copy)
    pd.testing.assert_frame_equal(table, before)
    assert not stale.exists()
    assert sorted(p.name for p in run_copy.iterdir() if p.is_file()) == sorted(
        ["sweep.json", "results.parquet", "results.csv", "history.parquet", "history.csv"])


def test_unreadable_result_json_is_skipped_with_a_warning(run_copy):
    d = run_copy / "trials" / "t01_bn_w1" / "seed-0"
    (d / "result.json").write_text('{"truncated": ')
    with pytest.warns(RuntimeWarning, match="unreadable"):
        df = load_results(run_copy)
    row = df[(df["trial_id"] == "t01_bn_w1") & (df["seed"] == 0)].iloc[0]
    assert row["status"] == "running"  # falls back to its checkpoint


def test_columns_markdown_documents_every_column():
    md = columns_markdown()
    lines = md.strip().splitlines()
    assert lines[0] == "| column | dtype | meaning |" and len(lines) == 2 + len(COLUMNS)
    for col, (dtype, desc) in COLUMNS.items():
        assert f"| `{col}` | {dtype} |" in md and desc
    assert {t for t, _ in COLUMNS.values()} <= {"str", "Int64", "float64", "boolean"}
    assert columns_markdown("history").count("\n") == 2 + len(HISTORY_COLUMNS)


def test_close_unfinished_replicates_records_a_pruned_trial(run_copy, tiny_run_dir):
    from bnsweep.sweep.recovery import close_unfinished_replicates

    resolved = {k: v for k, v in tiny_run_dir.trials["t06_bn_running"][0].items() if k != "seed"}
    assert close_unfinished_replicates(run_copy, "t06_bn_running", resolved, seeds=[0], status="pruned",
                                       reason="stopped by ASHA after epoch 1") == 1
    assert (run_copy / "trials/t06_bn_running/seed-0/result.json").is_file()
    done = {k: v for k, v in tiny_run_dir.trials["t00_all_w1"][0].items() if k != "seed"}
    assert close_unfinished_replicates(run_copy, "t00_all_w1", done, seeds=[0, 1], status="pruned",
                                       reason="x") == 0  # finished replicates are left alone
    row = load_results(run_copy).set_index("trial_id").loc["t06_bn_running"]
    assert (row["status"], row["reason"], row["epochs_run"]) == ("pruned", "stopped by ASHA after epoch 1", 1)
    assert row["params_trainable"] == 672 and row["lr_schedule.type"] == "multistep"
    assert row["replicate"] == 0 and pd.isna(row["test_accuracy"]) and row["finished_at"]
    assert len(load_history(run_copy).query("trial_id == 't06_bn_running'")) == 1
    assert row["started_at"] == "2026-11-27T00:00:00+00:00"  # from started.json


def test_close_unfinished_replicates_records_a_replicate_that_failed_before_it_started(run_copy, tiny_run_dir):
    """A worker that raised before writing started.json (e.g. its data file is missing) leaves at most a
    failure.json: the record is made from the trial's resolved config."""
    from bnsweep.sweep.recovery import close_unfinished_replicates

    resolved = {k: v for k, v in tiny_run_dir.trials["t07_bn_output"][0].items() if k != "seed"}
    d = run_copy / "trials" / "t99_failed_early" / "seed-0"
    d.mkdir(parents=True)
    (d / "failure.json").write_text(json.dumps({"reason": "DataError: x.npz: no such file", "at": "now"}))
    assert close_unfinished_replicates(run_copy, "t99_failed_early", resolved, seeds=[0, 1], status="failed",
                                       reason="the trial failed") == 2
    rows = load_results(run_copy).query("trial_id == 't99_failed_early'").set_index("seed")
    assert list(rows["status"]) == ["failed", "failed"]
    assert rows.loc[0, "reason"] == "DataError: x.npz: no such file" and rows.loc[1, "reason"] == "the trial failed"
    assert (rows["regime"] == "bn_output").all() and (rows["epochs_run"] == 0).all()
    assert (rows["params_trainable"] > 0).all()


def test_the_documented_columns_are_the_code_s_columns():
    """docs/results-table.md is generated from results.COLUMNS (the config columns from the fields'
    descriptions): regenerate it with `python -m bnsweep.store.columns` when a column changes."""
    from pathlib import Path

    from bnsweep.store.columns import columns_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "results-table.md").read_text()
    assert columns_markdown("results") in doc and columns_markdown("history") in doc
