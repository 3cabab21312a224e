"""Records the machine, library versions and load average in pytest-benchmark's JSON
(``machine_info``), for ``benches/report.py``."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benches import machine

_START: dict[str, Any] = {}


def pytest_sessionstart(session: Any) -> None:
    _START["loadavg"] = machine.loadavg()


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    info = machine.machine_info()
    info["loadavg_at_start"] = _START.get("loadavg")
    info["loadavg_at_end"] = machine.loadavg()
    machine_info["margin_engine"] = info
