"""Test-only hooks, named as such: kill points a reliability test can stop the driver at.

``BNSWEEP_TEST_PAUSE_AT=<point>`` makes the process stop at that point of its work, write
``BNSWEEP_TEST_PAUSE_FILE`` and sleep, so a test can kill it exactly there. Unset (always, outside the
test suite), ``pause_for_tests`` does nothing.

>>> pause_for_tests("nowhere")  # a no-op unless the environment names this point
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TEST_PAUSE_ENV = "BNSWEEP_TEST_PAUSE_AT"
TEST_PAUSE_FILE_ENV = "BNSWEEP_TEST_PAUSE_FILE"


def pause_for_tests(point: str) -> None:
    """Test-only kill point (a no-op unless ``BNSWEEP_TEST_PAUSE_AT`` names ``point``)."""
    if os.environ.get(TEST_PAUSE_ENV) != point:
        return
    import time

    marker = os.environ.get(TEST_PAUSE_FILE_ENV)
    if marker:
        tmp = Path(f"{marker}.{os.getpid()}.tmp")  # written then renamed: the test never reads half
        tmp.write_text(json.dumps({"point": point, "pid": os.getpid()}))
        os.replace(tmp, marker)
    time.sleep(600)
