from __future__ import annotations

from bnsweep.cli import main

raise SystemExit(main())
