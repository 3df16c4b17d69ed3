"""Command line: ``python -m bnsweep {plan,launch,schema,status,resume,export,plot} ...``.

Bad input (spec, data files, arguments, run directories) ends in one line per problem on stderr
and exit status 2, never a traceback; Ctrl-C ends a launch cleanly with how to resume (status 130;
SIGTERM likewise, status 143).

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
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage + exits 2; keep it to one line
        self.exit(EXIT_BAD_INPUT, printable(f"{self.prog}: {message} (see --help)") + "\n")


def _data_override(value: str) -> dict[str, Any]:
    p = Path(value).expanduser()
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


def _check_ray_args(args: argparse.Namespace) -> None:
    """Ray options that would otherwise fail deep inside Ray (a traceback) or hang (no CPU for a trial)."""
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


def _options(args: argparse.Namespace) -> Any:
    from bnsweep.sweep.driver import LaunchOptions

    _check_ray_args(args)
    if args.dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the Ray dashboard will listen on {args.dashboard_host}: anyone who can reach it can "
              "submit jobs and run code on this machine (the 2023 'ShadowRay' attacks on exposed Ray). "
              "Keep it behind a firewall or SSH tunnel; Ray's token authentication stays on.", file=sys.stderr)
    return LaunchOptions(run_dir=Path(args.run_dir) if getattr(args, "run_dir", None) else None,
                         address=args.address, dashboard=not args.no_dashboard,
                         dashboard_host=args.dashboard_host, dashboard_port=args.dashboard_port,
                         quiet=args.quiet, storage=args.storage, num_cpus=args.num_cpus)


# ------------------------------------------------------------------ verbs


def cmd_plan(args: argparse.Namespace) -> int:
    from bnsweep.report.plan import format_plan, make_plan

    spec = _load(args)
    report = make_plan(spec, probe=not args.no_probe)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        print(format_plan(report))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from bnsweep.sweep.driver import default_run_dir, launch

    spec = _load(args)
    options = _options(args)
    args.run_dir = str(options.run_dir or default_run_dir(spec))  # for the Ctrl-C message
    outcome = launch(spec, options=options, overrides=_overrides(args))
    return 0 if outcome.finished else EXIT_INTERRUPTED


def cmd_schema(args: argparse.Namespace) -> int:
    from bnsweep.spec.schema import spec_schema_json

    text = spec_schema_json()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from bnsweep.sweep.driver import resume

    outcome = resume(Path(args.run_dir), options=_options(args))
    return 0 if outcome.finished else EXIT_INTERRUPTED


def cmd_status(args: argparse.Namespace) -> int:
    from bnsweep.report.status import format_status, sweep_status

    st = sweep_status(Path(args.run_dir))
    print(json.dumps(st, default=str) if args.json else format_status(st))
    return 0


def _check_run_dirs(paths: list[str]) -> None:
    """export/plot read run directories or results tables: anything else is named, not read as empty."""
    for d in paths:
        p = Path(d)
        if p.is_dir() and not any((p / n).exists() for n in ("sweep.json", "trials", "results.parquet", "results.csv")):
            raise _Bad(f"{d}: not a bnsweep run directory (no sweep.json, trials/ or results table)")


def cmd_export(args: argparse.Namespace) -> int:
    from bnsweep.analysis.tables import export

    _check_run_dirs(args.run_dirs)
    group_by = tuple(g.strip() for g in args.group_by.split(",")) if args.group_by else None
    kwargs: dict[str, Any] = {"fmt": args.format, "out": Path(args.out) if args.out else None,
                              "metric": args.metric, "caption": args.caption, "label": args.label}
    if group_by:
        kwargs["group_by"] = group_by
    try:
        out = export([Path(d) for d in args.run_dirs], **kwargs)
    except (ValueError, KeyError) as e:  # bad --group-by/--metric/--format combinations, empty tables
        raise _Bad(e.args[0] if e.args else type(e).__name__) from None
    if isinstance(out, str) and not args.out:
        print(out)
    else:
        print(f"wrote {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bnsweep.analysis.plots import plot

    _check_run_dirs(args.run_dirs)
    out_dir = Path(args.out) if args.out else Path(args.run_dirs[0]) / "plots"
    try:
        paths = plot([Path(d) for d in args.run_dirs], kind=args.kind, out_dir=out_dir,
                     trials=args.trials.split(",") if args.trials else None)
    except (ValueError, KeyError) as e:  # nothing to plot, unknown trial ids
        raise _Bad(e.args[0] if e.args else type(e).__name__) from None
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

    from bnsweep.spec.config import keys_help

    keys = argparse.RawDescriptionHelpFormatter
    epilog = "trial-config keys (for --set, `fixed:` and `parameters:`; `bnsweep schema` writes the spec format):\n" \
        + keys_help()
    q = sub.add_parser("plan", help="validate, expand, count parameters, show LR curves, estimate cost",
                       epilog=epilog, formatter_class=keys)
    spec_args(q)
    q.add_argument("--no-probe", action="store_true", help="skip the measured speed probe")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_plan)

    q = sub.add_parser("launch", help="run a sweep", epilog=epilog, formatter_class=keys)
    spec_args(q)
    ray_args(q)
    q.add_argument("--run-dir", help="default runs/<spec name>")
    q.set_defaults(func=cmd_launch)

    q = sub.add_parser("schema", help="the JSON Schema of a sweep spec (for editors: docs/sweep-spec.schema.json)")
    q.add_argument("--out", help="write it to this file (default: print)")
    q.set_defaults(func=cmd_schema)

    q = sub.add_parser("resume", help="continue a sweep after a crash or Ctrl-C")
    q.add_argument("run_dir")
    ray_args(q)
    q.set_defaults(func=cmd_resume)

    q = sub.add_parser("status", help="progress table of a running or finished sweep")
    q.add_argument("run_dir")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_status)

    q = sub.add_parser("export", help="results table for a paper")
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--format", choices=["latex", "markdown", "csv", "parquet"], default="markdown")
    q.add_argument("--group-by", help="comma-separated columns (default: regime,model.depth,model.width)")
    q.add_argument("--metric", default="test_accuracy")
    q.add_argument("--out", help="output file (default: print; parquet needs --out)")
    q.add_argument("--caption")
    q.add_argument("--label")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("plot", help="figures: params-vs-accuracy, lr-curves, batch-size, gamma, feature-maps")
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--kind", required=True,
                   choices=["params-vs-accuracy", "lr-curves", "batch-size", "gamma", "feature-maps", "filters"])
    q.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    q.add_argument("--trials", help="comma-separated trial ids (feature-maps)")
    q.set_defaults(func=cmd_plot)
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) if str(e) else type(e).__name__
    return printable(text[:2000])


def _broken_pipe() -> int:  # `bnsweep plan X | head`
    with contextlib.suppress(OSError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush at exit
    return 0


def main(argv: list[str] | None = None) -> int:
    import yaml

    from bnsweep.engine.data import DataError
    from bnsweep.spec.errors import ConfigError
    from bnsweep.spec.sweep_spec import SpecError
    from bnsweep.store.rundir import RunDirError

    args = build_parser().parse_args(argv)
    for name in ("spec", "run_dir", "run_dirs", "data", "out"):  # '' would silently mean '.'
        value = getattr(args, name, None)
        if value == "" or (isinstance(value, list) and "" in value):
            print(f"bnsweep {args.verb}: {name.replace('_', '-')}: an empty path", file=sys.stderr)
            return EXIT_BAD_INPUT
    from bnsweep.base import interrupts

    try:  # launch and resume: a Ctrl-C is never lost, nor lands inside Ray's start-up (bnsweep.base.interrupts)
        with interrupts.catching() if args.verb in ("launch", "resume") else contextlib.nullcontext():
            status = int(args.func(args) or 0)
        return EXIT_TERMINATED if status == EXIT_INTERRUPTED and interrupts.terminated() else status
    except SpecError as e:
        for problem in e.problems:
            print(printable(str(problem)), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (_Bad, ConfigError, DataError, RunDirError) as e:
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
        if args.verb == "launch" and not (where and (Path(where) / "sweep.json").exists()):
            print(f"\n{what} before the sweep started; nothing was written. Launch it again.", file=sys.stderr)
        elif args.verb in ("launch", "resume"):
            print(f"\n{what}. Nothing finished is lost; continue with: bnsweep resume {where or 'RUN_DIR'}",
                  file=sys.stderr)
        else:
            print(f"\n{what}.", file=sys.stderr)
        return EXIT_TERMINATED if interrupts.terminated() else EXIT_INTERRUPTED
