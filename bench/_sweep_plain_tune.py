"""Helper of bench/orchestration.py: "use the libraries directly" — a minimal hand-written Ray Tune +
OptunaSearch script running the same K trials (grid over lr through Optuna's GridSampler), one at a
time, each trial ``bnsweep.engine.trial.run`` (the training code is not what is compared). Data put into the
object store once (``tune.with_parameters``), ``reuse_actors=True``, no dashboard, no tracking, no
results table. argv: configs.json, storage dir, cpus per trial, events file (the trainable appends its
JSON-line events there: Ray workers' stdout does not reach this process). Prints JSON-line events.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def main() -> None:
    t_start = time.time()
    configs = json.loads(open(sys.argv[1]).read())  # noqa: SIM115
    storage, cpus, events = sys.argv[2], float(sys.argv[3]), sys.argv[4]
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from bnsweep.engine.data import load_data
    from bnsweep.spec.config import TrialConfig

    lrs = [c["lr"] for c in configs]
    base = {k: v for k, v in configs[0].items() if k != "lr"}
    data = load_data(TrialConfig.from_dict(configs[0]).data)
    ray.init(include_dashboard=False, num_cpus=os.cpu_count(), log_to_driver=False,
             object_store_memory=200 << 20, runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3",
                                                                      "KERAS_BACKEND": "tensorflow"}})

    def trainable(config: dict, data: Any = None) -> None:
        from bnsweep.engine.trial import run

        def event(**e: object) -> None:
            with open(events, "a") as f:
                f.write(json.dumps({**e, "t": time.time()}) + "\n")

        def report(m: object) -> None:
            event(event="epoch", epoch=m.epoch, seconds=m.seconds)  # type: ignore[attr-defined]
            tune.report({"val_accuracy": m.val_accuracy, "epoch": m.epoch})  # type: ignore[attr-defined]

        event(event="trial_start")
        r = run({**base, "lr": config["lr"]}, data=data, report=report)
        event(event="trial_end", wall_seconds=r.wall_seconds, status=r.status)

    search = OptunaSearch(metric="val_accuracy", mode="max",
                          space={"lr": optuna.distributions.CategoricalDistribution(lrs)},
                          sampler=optuna.samplers.GridSampler({"lr": lrs}, seed=0))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": cpus}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=len(lrs), max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="plain", storage_path=storage, verbose=0))
    tuner.fit()
    ray.shutdown()
    print(json.dumps({"event": "done", "t": time.time(), "t_start": t_start}), flush=True)


if __name__ == "__main__":
    main()
