"""Helper of bench/orchestration.py: the same K trials back to back in one process via ``trial.run``.

Reads a JSON list of trial configs on argv[1]; prints JSON-line events with wall-clock timestamps.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    t_start = time.time()
    configs = json.loads(open(sys.argv[1]).read())  # noqa: SIM115
    from bnsweep.engine.data import load_data
    from bnsweep.engine.trial import TrialRun
    from bnsweep.spec.config import TrialConfig

    data = load_data(TrialConfig.from_dict(configs[0]).data)  # once, as launch does
    for i, cfg in enumerate(configs):
        run = TrialRun(cfg, data=data, threads=int(sys.argv[2]) if len(sys.argv) > 2 else None)
        print(json.dumps({"event": "trial_start", "t": time.time(), "i": i}), flush=True)
        while run.epoch < run.config.epochs:
            m = run.train_epoch()
            print(json.dumps({"event": "epoch", "t": time.time(), "i": i, "epoch": run.epoch, "seconds": m.seconds}),
                  flush=True)
        r = run.finish()
        print(json.dumps({"event": "trial_end", "t": time.time(), "i": i, "wall_seconds": r.wall_seconds,
                          "status": r.status}), flush=True)
    print(json.dumps({"event": "done", "t": time.time(), "t_start": t_start}), flush=True)


if __name__ == "__main__":
    main()
