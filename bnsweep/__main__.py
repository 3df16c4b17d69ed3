from __future__ import annotations

import sys

from bnsweep.base.interrupts import let_exit_status_through

try:  # a Ctrl-C while the CLI's modules import is a clean exit 130 too, never a traceback
    from bnsweep.cli import main
except KeyboardInterrupt:
    print("\ninterrupted.", file=sys.stderr)
    status = 130
else:
    status = main()
let_exit_status_through()  # a Ctrl-C caught inside a string exec must not turn exit 130 into death by SIGINT
raise SystemExit(status)
