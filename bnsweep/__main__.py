from __future__ import annotations

from bnsweep.cli import main
from bnsweep.interrupts import let_exit_status_through

status = main()
let_exit_status_through()  # a Ctrl-C caught inside a string exec must not turn exit 130 into death by SIGINT
raise SystemExit(status)
