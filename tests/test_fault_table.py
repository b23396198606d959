"""The fault table (tools/fault_table.py, docs/guide/faults.md §6): every fault of issue 16 and the ones that already
held, tried as a user would (signals to the scripts, full tmpfs disks, a torchrun rank killed), printed as a table."""
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import fault_table  # noqa: E402

# Tens of script runs, two torchrun processes and tmpfs mounts: minutes.
pytestmark = pytest.mark.slow


def test_every_fault_ends_in_one_line_and_loses_nothing(tmp_path):
    rows = fault_table.run_table(tmp_path, report=lambda line: None)
    table = fault_table.format_table(rows)
    print(table)
    failed = [row for row in rows if row.verdict == "FAILED"]
    assert not failed, table
    assert len(rows) >= 35 and all("TRACEBACK" not in row.line for row in rows), table
