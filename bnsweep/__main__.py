from __future__ import annotations

from bnsweep.base.interrupts import let_exit_status_through
from bnsweep.cli import main

status = main()
let_exit_status_through()  # a Ctrl-C caught inside a string exec must not turn exit 130 into death by SIGINT
raise SystemExit(status)
