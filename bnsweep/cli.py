"""Command line: ``python -m bnsweep {plan,launch,schema,status,resume,export,compare,plot} ...``.

Bad input (spec, data files, arguments, run directories) ends in one line per problem on stderr
and exit status 2, never a traceback; Ctrl-C ends a launch cleanly with how to resume (status 130;
SIGTERM likewise, status 143).

Every verb that takes a run directory (``launch --run-dir``, ``resume``, ``status``, ``export``,
``plot``) takes a local or NFS path or a URI: ``s3://BUCKET/PREFIX``, ``gs://...``, or any fsspec
filesystem (credentials and endpoints from the usual environment variables, e.g. ``AWS_ENDPOINT_URL_S3``).

Exit status of ``launch`` and ``resume``: 0 the sweep finished and every configuration completed,
was pruned or diverged; 3 it finished, but some work failed (a trial's code raised after its retries,
or Ray gave up on it) or was lost (a replicate of which neither a record nor a checkpoint could be
found): ``bnsweep status RUN_DIR`` lists them; 3 too when a fault of the machine (disk full, I/O error)
stopped it half way (resume once fixed), and when Ray Tune's loop ended with configurations not ended
and no Ctrl-C (resume carries on); 2 bad input (a run directory with too little free space
included); 130 Ctrl-C; 143 SIGTERM (resume then). ``resume`` of a sweep that already completed: 0.

>>> main(["plan", "no/such/spec.yaml"])  # doctest: +SKIP
no/such/spec.yaml: no such file
2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from bnsweep.base.text import printable

EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3  # finished, with failed or lost work
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage + exits 2; keep it to one line
        self.exit(EXIT_BAD_INPUT, printable(f"{self.prog}: {message} (see --help)") + "\n")


def _data_override(value: str) -> dict[str, Any]:
    if "\x00" in value:
        raise _Bad(f"--data {printable(value)}: not a path (it holds a NUL character)")
    p = Path(value).expanduser()
    try:
        p.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (Python 3.11: RuntimeError)
        raise _Bad(f"--data {value}: a symbolic link loop (too many levels of symbolic links); point it at a "
                   "real .npz file or cifar-10-batches-py directory") from None
    if p.suffix == ".npz":
        return {"data.source": "npz", "data.path": str(p.resolve())}
    if p.is_dir():
        return {"data.source": "dir", "data.path": str(p.resolve())}
    raise _Bad(f"--data {value}: expected an .npz file or a cifar-10-batches-py directory")


class _Bad(Exception):
    """A command-line problem: printed as one line, exit 2."""


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from bnsweep.spec.sweep_spec import yaml_value

    out: dict[str, Any] = {}
    data = getattr(args, "data", None) or os.environ.get("BNSWEEP_DATA_OVERRIDE")
    if data:
        out.update(_data_override(data))
    if getattr(args, "epochs", None) is not None:
        out["epochs"] = args.epochs
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise _Bad(f"--set {item}: expected KEY=VALUE, e.g. --set optimizer.weight_decay=5e-4")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml_value(v)
        except Exception as e:
            raise _Bad(f"--set {item}: the value is not valid YAML ({e.__class__.__name__})") from None
    return out


_FLAGS = {"trials": "--trials", "replicates": "--replicates", "max_concurrent": "--max-concurrent",
          "resources.cpu": "--cpus-per-trial", "resources.gpu": "--gpus-per-trial"}


def _load(args: argparse.Namespace) -> Any:
    """The spec of ``args`` with the command line's overrides applied (problems name the flag); its warnings
    (a schedule that cannot do what it says...) are printed, one line each."""
    from bnsweep.spec.errors import Problem
    from bnsweep.spec.sweep_spec import SpecError, describe_grid, grid_size, load_spec

    spec = load_spec(args.spec, overrides=_overrides(args))
    changes: dict[str, Any] = {k: getattr(args, k) for k in ("trials", "replicates", "max_concurrent")
                               if getattr(args, k, None) is not None}
    res = {k: v for k, v in (("cpu", getattr(args, "cpus_per_trial", None)),
                             ("gpu", getattr(args, "gpus_per_trial", None))) if v is not None}
    if res:
        changes["resources"] = {**spec.resources.model_dump(exclude_unset=True), **res}
    where = f"bnsweep {args.verb}"
    trials = changes.get("trials")
    if spec.method == "grid" and isinstance(trials, int) and trials > grid_size(spec.parameters):
        raise _Bad(f"--trials {trials}: the grid of {args.spec} has {describe_grid(spec.parameters)}, each run once; "
                   f"give at most {grid_size(spec.parameters):,} (the first N points), or leave --trials out")
    if changes:
        try:
            spec = spec.replace(**changes)  # the saved spec is what runs
        except SpecError as e:
            raise SpecError([Problem(where, None, _FLAGS.get(p.key, p.key), p.message) for p in e.problems]) from None
    for w in spec.warnings:
        print(printable(f"warning: {w}"), file=sys.stderr)
    return spec


def _check_ray_args(args: argparse.Namespace, spec: Any = None) -> None:
    """Ray options that would otherwise fail deep inside Ray (a traceback) or hang (no CPU for a trial).

    Without ``--address``, ``spec``'s trials must fit on this machine (a GPU, TPU or CPU ask it cannot
    hold would wait forever): checked here before any Ray starts. With ``--address``, the cluster is
    checked once joined (``bnsweep.sweep.cluster.preflight``)."""
    if not 1 <= args.dashboard_port <= 65535:
        raise _Bad(f"--dashboard-port: expected a port 1..65535, received {args.dashboard_port}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise _Bad(f"--num-cpus: expected an integer >= 1, received {args.num_cpus}")
    if not args.dashboard_host.strip() or any(c.isspace() for c in args.dashboard_host):
        raise _Bad(f"--dashboard-host: expected a host name or IP address, received {args.dashboard_host!r}")
    if args.address and args.address != "auto":
        host, sep, port = args.address.removeprefix("ray://").rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise _Bad(f"--address {args.address}: expected 'auto' or HOST:PORT of a Ray head "
                       "(e.g. 10.0.0.5:6379)")
        import socket

        try:  # Ray itself retries for minutes before giving up on an address nobody answers at
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as e:
            raise _Bad(f"--address {args.address}: no Ray head answers there ({e.strerror or e})") from None
    if spec is not None and not args.address:
        from bnsweep.sweep.cluster import check_local

        check_local(spec, num_cpus=args.num_cpus, hint=" (--address HOST:PORT joins a Ray cluster that has it)")


def _options(args: argparse.Namespace, spec: Any = None) -> Any:
    _check_ray_args(args, spec)  # before Ray and Optuna are imported: a refusal is quick
    from bnsweep.sweep.driver import LaunchOptions

    if args.dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the Ray dashboard will listen on {args.dashboard_host}: anyone who can reach it can "
              "submit jobs and run code on this machine (the 2023 'ShadowRay' attacks on exposed Ray). "
              "Keep it behind a firewall or SSH tunnel; Ray's token authentication stays on.", file=sys.stderr)
    return LaunchOptions(run_dir=getattr(args, "run_dir", None) or None,  # a path or a URI: kept as typed
                         address=args.address, dashboard=not args.no_dashboard,
                         dashboard_host=args.dashboard_host, dashboard_port=args.dashboard_port,
                         quiet=args.quiet, plain=getattr(args, "plain", False), storage=args.storage,
                         num_cpus=args.num_cpus)


# ------------------------------------------------------------------ verbs


def cmd_plan(args: argparse.Namespace) -> int:
    from bnsweep.report.plan import format_plan, make_plan

    spec = _load(args)
    report = make_plan(spec, probe=not args.no_probe, check_here=not args.for_cluster)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        print(format_plan(report))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    spec = _load(args)
    options = _options(args, spec)
    from bnsweep.sweep.driver import default_run_dir, launch

    args.run_dir = str(options.run_dir or default_run_dir(spec))  # for the Ctrl-C message
    outcome = launch(spec, options=options, overrides=_overrides(args))
    return _exit_status(outcome)


def _exit_status(outcome: Any) -> int:
    if not outcome.finished:  # stopped by Ctrl-C / SIGTERM, else Ray Tune's loop ended with work left: 3
        return EXIT_INTERRUPTED if outcome.interrupted else EXIT_INCOMPLETE
    return 0 if outcome.complete else EXIT_INCOMPLETE


def cmd_schema(args: argparse.Namespace) -> int:
    from bnsweep.base.atomic import atomic_write_text
    from bnsweep.spec.schema import spec_schema_json

    text = spec_schema_json()
    if args.out:
        atomic_write_text(Path(args.out), text)  # whole or absent, like every file bnsweep writes
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from bnsweep.sweep.driver import resume

    outcome = resume(args.run_dir, options=_options(args))
    return _exit_status(outcome)


def cmd_status(args: argparse.Namespace) -> int:
    from bnsweep.report.status import format_status, sweep_status

    st = sweep_status(args.run_dir)
    print(json.dumps(st, default=str) if args.json else format_status(st))
    return 0


def _local_run_dirs(paths: list[str], *, weights: bool = False) -> list[Path]:
    """export/plot read run directories or results tables: anything else is named, not read as empty.
    A URI's records and tables (and, for ``weights``, trained weights) are downloaded into this
    machine's cache first; the local copies are returned."""
    from bnsweep.store.fs import is_uri

    out = []
    for d in paths:
        if is_uri(d):
            from bnsweep.sweep.driver import open_run_dir

            rd = open_run_dir(d)
            rd.check_reachable()
            tables = [rd.rel(t) for t in rd.table_files()]
            if not any(rd.exists_remote(n) for n in (rd.SWEEP_JSON, *tables)):
                raise _Bad(f"{d}: not a bnsweep run directory (no sweep.json or results table there)")
            suffixes = (".json", ".yaml", ".parquet", ".csv") + ((".npz",) if weights else ())
            rd.pull(prefixes=(rd.SWEEP_JSON, rd.SPEC_YAML, *tables, rd.TRIALS + "/"), suffixes=suffixes)
            out.append(rd.local)
            continue
        p = Path(d)
        if p.is_dir() and not any((p / n).exists() for n in ("sweep.json", "trials", "results.parquet", "results.csv")):
            raise _Bad(f"{d}: not a bnsweep run directory (no sweep.json, trials/ or results table)")
        out.append(p)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    run_dirs = _local_run_dirs(args.run_dirs)
    out_arg = Path(args.out) if args.out else None
    try:
        if args.scorecard or args.expect:
            from bnsweep.analysis.scorecard import read_expectations, scorecard

            if args.format == "parquet":
                raise _Bad("--scorecard: --format must be markdown, latex or csv")
            expectations = read_expectations(args.expect) if args.expect else None
            out: Any = scorecard(run_dirs, fmt=args.format, out=out_arg,
                                 expectations=expectations, caption=args.caption, label=args.label)
        else:
            from bnsweep.analysis.tables import export

            group_by = tuple(g.strip() for g in args.group_by.split(",")) if args.group_by else None
            kwargs: dict[str, Any] = {"fmt": args.format, "out": out_arg, "metric": args.metric,
                                      "caption": args.caption, "label": args.label}
            if group_by:
                kwargs["group_by"] = group_by
            out = export(run_dirs, **kwargs)
    except (ValueError, KeyError) as e:  # bad --group-by/--metric/--format, not a results table, empty tables
        raise _Bad(e.args[0] if e.args else type(e).__name__) from None
    print(out if isinstance(out, str) else f"wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bnsweep.analysis.compare import compare

    run_dirs = _local_run_dirs(args.run_dirs)
    ignore = tuple(k.strip() for k in args.ignore.split(",") if k.strip()) if args.ignore else ()
    try:
        out = compare(run_dirs, by=args.by, baseline=args.baseline, metric=args.metric,
                      fmt=args.format, out=Path(args.out) if args.out else None, caption=args.caption,
                      label=args.label, confidence=args.confidence, n_boot=args.bootstrap, ignore=ignore,
                      across=args.across)
    except (ValueError, KeyError) as e:
        raise _Bad(e.args[0] if e.args else type(e).__name__) from None
    print(out if isinstance(out, str) else f"wrote {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bnsweep.analysis.plots import plot
    from bnsweep.store.fs import is_uri

    run_dirs = _local_run_dirs(args.run_dirs, weights=True)
    out_dir = Path(args.out) if args.out else run_dirs[0] / "plots"
    try:
        paths = plot(run_dirs, kind=args.kind, out_dir=out_dir,
                     trials=args.trials.split(",") if args.trials else None)
    except (ValueError, KeyError) as e:  # nothing to plot, unknown trial ids
        raise _Bad(e.args[0] if e.args else type(e).__name__) from None
    if not args.out and is_uri(args.run_dirs[0]):  # default: RUN_DIR/plots, in the run's store too
        from bnsweep.sweep.driver import open_run_dir

        rd = open_run_dir(args.run_dirs[0])
        for p in paths:
            p = Path(p)
            if p.is_file():
                rd.push([p])
                print(f"wrote {rd.shown(p)} (and {p})")
        return 0
    for p in paths:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bnsweep", description="Sweeps for 'Training BatchNorm and Only BatchNorm'.")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    def spec_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("spec", help="sweep spec YAML, e.g. sweeps/quickstart.yaml")
        q.add_argument("--data", help="use a local copy of the data: an .npz (x_train/y_train[, x_test/y_test]) "
                                      "or a cifar-10-batches-py directory")
        q.add_argument("--epochs", type=int, help="override the epochs of every trial")
        q.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override any trial-config key, e.g. --set model.depth=14 (repeatable; the keys are "
                            "listed below)")
        q.add_argument("--trials", type=int, help="override the number of sampled configurations (a grid: its "
                                                  "first N points)")
        q.add_argument("--replicates", type=int, help="override the seeds per configuration")
        q.add_argument("--max-concurrent", type=int, dest="max_concurrent")
        q.add_argument("--cpus-per-trial", type=float, help="override resources.cpu of the spec")
        q.add_argument("--gpus-per-trial", type=float, help="override resources.gpu (fractions share a GPU)")

    def ray_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--address", help="join a running Ray cluster ('auto' or HOST:PORT) instead of a local Ray")
        q.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
        q.add_argument("--dashboard-host", default="127.0.0.1",
                       help="interface for the Ray dashboard (default 127.0.0.1; anything else exposes it)")
        q.add_argument("--dashboard-port", type=int, default=8265)
        q.add_argument("--storage", help="Optuna storage URL (default: sqlite file in the run directory)")
        q.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
        q.add_argument("--quiet", action="store_true", help="JSON lines instead of the live display")
        q.add_argument("--plain", action="store_true",
                       help="plain lines instead of the live display on a terminal (the default off a terminal)")

    from bnsweep.spec.config import keys_help

    keys = argparse.RawDescriptionHelpFormatter
    epilog = "trial-config keys (for --set, `fixed:` and `parameters:`; `bnsweep schema` writes the spec format):\n" \
        + keys_help()
    q = sub.add_parser("plan", help="validate, expand, count parameters, show LR curves, estimate cost",
                       epilog=epilog, formatter_class=keys)
    spec_args(q)
    q.add_argument("--no-probe", action="store_true", help="skip the measured speed probe")
    q.add_argument("--for-cluster", action="store_true",
                   help="plan for a Ray cluster or another machine: do not check the trials' CPUs/GPUs/TPUs/memory "
                        "against this one (launch --address checks the cluster's nodes)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_plan)

    q = sub.add_parser("launch", help="run a sweep", epilog=epilog, formatter_class=keys)
    spec_args(q)
    ray_args(q)
    q.add_argument("--run-dir", help="a path or a URI (s3://BUCKET/PREFIX, gs://..., any fsspec filesystem); "
                                     "default runs/<spec name>")
    q.set_defaults(func=cmd_launch)

    q = sub.add_parser("schema", help="the JSON Schema of a sweep spec (for editors: docs/sweep-spec.schema.json)")
    q.add_argument("--out", help="write it to this file (default: print)")
    q.set_defaults(func=cmd_schema)

    q = sub.add_parser("resume", help="continue a sweep after a crash or Ctrl-C")
    q.add_argument("run_dir", help="the run directory: a path or a URI (s3://BUCKET/PREFIX, ...)")
    ray_args(q)
    q.set_defaults(func=cmd_resume)

    q = sub.add_parser("status", help="progress table of a running or finished sweep")
    q.add_argument("run_dir", help="the run directory: a path or a URI (s3://BUCKET/PREFIX, ...)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_status)

    q = sub.add_parser("export", help="results table for a paper")
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--format", choices=["latex", "markdown", "csv", "parquet"], default="markdown")
    q.add_argument("--group-by", help="comma-separated columns (default: regime,model.depth,model.width)")
    q.add_argument("--metric", default="test_accuracy")
    q.add_argument("--out", help="output file, or an existing directory for <sweep>-table.<ext> "
                                 "(default: print; parquet needs --out)")
    q.add_argument("--caption", help="LaTeX caption, plain text (escaped)")
    q.add_argument("--label", help="LaTeX label (made a valid label)")
    q.add_argument("--scorecard", action="store_true",
                   help="the reproduction scorecard: each expectation of the run's spec met / missed / not run")
    q.add_argument("--expect", metavar="FILE.yaml",
                   help="expectations from this file's 'expect:' section (e.g. a spec) instead of the run's own")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("compare", help="paired, seed-matched differences between groups (e.g. regimes)")
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--by", default="regime", help="the trial-config key whose values are compared (default regime)")
    q.add_argument("--baseline", help="compare every other value with this one (default: every two values)")
    q.add_argument("--across", action="store_true",
                   help="compare the run directories instead (OLD_RUN NEW_RUN: which cells moved beyond noise)")
    q.add_argument("--metric", default="test_accuracy")
    q.add_argument("--format", choices=["markdown", "latex", "csv"], default="markdown")
    q.add_argument("--out", help="output file, or an existing directory for <sweep>-compare.<ext> (default: print)")
    q.add_argument("--caption", help="LaTeX caption, plain text (escaped)")
    q.add_argument("--label", help="LaTeX label (made a valid label)")
    q.add_argument("--confidence", type=float, default=0.95, help="interval level and 1 − α (default 0.95)")
    q.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    q.add_argument("--ignore", metavar="KEYS",
                   help="comma-separated config keys that do not define a configuration when pairing")
    q.set_defaults(func=cmd_compare)

    q = sub.add_parser("plot", help="figures: params-vs-accuracy, lr-curves, batch-size, gamma, feature-maps")
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--kind", required=True,
                   choices=["params-vs-accuracy", "lr-curves", "batch-size", "gamma", "feature-maps", "filters"])
    q.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    q.add_argument("--trials", help="comma-separated trial ids (feature-maps)")
    q.set_defaults(func=cmd_plot)
    return p


def _holds_sweep(where: str) -> bool:
    """Whether the run directory ``where`` (a path or URI) has its sweep files (the driver's copy)."""
    try:
        from bnsweep.store.rundir import RunDir

        return RunDir(where).sweep_json.exists()
    except Exception:
        return False


def _symlink_loop_argument(args: argparse.Namespace) -> str | None:
    """The first path argument (spec, --data, --run-dir, a run directory, --out) that is, or runs through, a
    symbolic link loop: named in one line (Path.resolve would raise a RuntimeError deep inside a verb)."""
    import errno

    from bnsweep.store.fs import is_uri

    for name, flag in (("spec", "spec"), ("data", "--data"), ("run_dir", "--run-dir" if args.verb == "launch"
                                                                      else "run directory"),
                       ("run_dirs", "run directory"), ("out", "--out")):
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, str) or is_uri(v):
                continue
            try:
                os.stat(os.path.expanduser(v))
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return (f"{flag} {v}: a symbolic link loop (too many levels of symbolic links); "
                            "point it at a real file or directory")
            except ValueError:  # an embedded NUL: the verb names it
                continue
    return None


def _sweep_stopped() -> type[Exception]:
    """A sweep stopped half way by a fault of the machine (disk full, I/O error): exit 3, one line."""
    from bnsweep.sweep.driver import SweepStopped

    return SweepStopped


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) if str(e) else type(e).__name__
    return printable(text[:2000])


def _broken_pipe() -> int:  # `bnsweep plan X | head`
    with contextlib.suppress(OSError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush at exit
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one verb; returns the exit status (0 done, 2 bad input, 3 finished with failed or lost work,
    130 Ctrl-C, 143 SIGTERM)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while the verb's modules import, before the verb's own handling below
        print("\ninterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    import yaml

    from bnsweep.engine.data import DataError
    from bnsweep.spec.errors import ConfigError
    from bnsweep.spec.sweep_spec import SpecError
    from bnsweep.store.fs import LocationError
    from bnsweep.store.rundir import RunDirError

    args = build_parser().parse_args(argv)
    for name in ("spec", "run_dir", "run_dirs", "data", "out"):  # '' would silently mean '.'
        value = getattr(args, name, None)
        if value == "" or (isinstance(value, list) and "" in value):
            print(f"bnsweep {args.verb}: {name.replace('_', '-')}: an empty path", file=sys.stderr)
            return EXIT_BAD_INPUT
    loop = _symlink_loop_argument(args)
    if loop:
        print(printable(f"bnsweep {args.verb}: {loop}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    from bnsweep.base import interrupts

    try:  # launch and resume: a Ctrl-C is never lost, nor lands inside Ray's start-up (bnsweep.base.interrupts)
        # plan too: its probe trains in this process, where a library callback can swallow a Ctrl-C
        with interrupts.catching() if args.verb in ("launch", "resume", "plan") else contextlib.nullcontext():
            status = int(args.func(args) or 0)
            interrupts.raise_if_pending()
        return EXIT_TERMINATED if status == EXIT_INTERRUPTED and interrupts.terminated() else status
    except SpecError as e:
        for problem in e.problems:
            print(printable(str(problem)), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (_Bad, ConfigError, DataError, RunDirError, LocationError) as e:
        print(f"bnsweep {args.verb}: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except yaml.YAMLError as e:  # the spec reader should turn these into problems; never a traceback
        where = getattr(args, "spec", None) or getattr(args, "run_dir", None) or ""
        print(f"bnsweep {args.verb}: {printable(str(where))}: invalid YAML ({_one_line(e)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a path that cannot be read or written (missing, permissions, disk full)
        if isinstance(e, BrokenPipeError):
            return _broken_pipe()
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(printable(f"bnsweep {args.verb}: {where}{e.strerror or _one_line(e)}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        where = getattr(args, "run_dir", None)
        what = "terminated (SIGTERM)" if interrupts.terminated() else "interrupted"
        if args.verb == "launch" and not (where and _holds_sweep(where)):
            print(f"\n{what} before the sweep started; nothing was written. Launch it again.", file=sys.stderr)
        elif args.verb in ("launch", "resume"):
            print(f"\n{what}. Nothing finished is lost; continue with: bnsweep resume {where or 'RUN_DIR'}",
                  file=sys.stderr)
        else:
            print(f"\n{what}.", file=sys.stderr)
        return EXIT_TERMINATED if interrupts.terminated() else EXIT_INTERRUPTED
    except _sweep_stopped() as e:  # (evaluated only when an exception no clause above took gets here)
        print(f"bnsweep {args.verb}: {_one_line(e)}", file=sys.stderr)
        return EXIT_INCOMPLETE
