"""Issue 12, "Memory and silent errors", first finding: distance, scan-with-distance and the
liquidation map allocated underlyings × instruments × 201 floats whatever was held (one position
in a 4,000-instrument, 500-underlying book peaked at 3.3 GB; 100k instruments died). Memory must
be bounded by what accounts hold.

The calls run in a child process on a book of 100,000 perpetuals over 500 underlyings with one
account holding one of them. The child caps its address space (`RLIMIT_AS`) at what it has
mapped after building the book plus 3 GiB, so the old code (which would need ~80 GB) fails fast
on an allocation instead of exhausting the machine, and it reports its peak RSS growth over the
calls, which must stay small (the book's own per-instrument arrays are a few MB; the old code
peaked at the 3 GiB cap and aborted).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("margin_engine")

CHILD = r"""
import json, resource, sys
import pyarrow as pa
import margin_engine as me

N_UNDERLYINGS, PER = 500, 200
n = N_UNDERLYINGS * PER
names = [f"I{i}" for i in range(n)]
book = me.Book(
    pa.table({
        "instrument": names,
        "kind": ["perpetual"] * n,
        "underlying": [f"U{i // PER:03d}" for i in range(n)],
        "multiplier": [1.0] * n,
        "initial_margin_rate": [0.10] * n,
        "maintenance_margin_rate": [0.05] * n,
    }),
    pa.table({
        "asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
        "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0],
    }),
)
market = me.Market(
    pa.table({"underlying": [f"U{u:03d}" for u in range(N_UNDERLYINGS)], "index_price": [100.0] * N_UNDERLYINGS}),
    pa.table({"instrument": names, "mark_price": [100.0] * n}),
    0,
)
# one account: long 2 perpetuals of U007 (mark 100) and 40 USD; standard (mmr 5%):
# e(m) = 40 + 200 m - 10 (1 + m) = 30 + 190 m; portfolio: a 15% scan loss of 30, e(0) = 10
positions = pa.table({"account_id": pa.array([1], pa.uint64()), "instrument": [names[7 * PER]], "quantity": [2.0]})
balances = pa.table({"account_id": pa.array([1], pa.uint64()), "asset": ["USD"], "amount": [40.0]})
args = (book, positions, balances, market)
me.margin(*args)  # the thread pool and the book's own arrays exist before the cap

def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])

cap = status_kib("VmSize") * 1024 + (3 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for model in ("standard", "portfolio"):
    d = me.liquidation_distance(*args, model=model).to_pylist()
    s = me.liquidation_scan(*args, model=model, distance=True).to_pylist()
    m = me.liquidation_map(*args, model=model)
    out[model] = {
        "distance": [(r["underlying"], r["move_down"], r["move_up"]) for r in d],
        "nearest": (s[0]["nearest_underlying"], s[0]["nearest_move"]),
        "map_rows": m.num_rows,
        "map_accounts": sum(m.column("accounts").to_pylist()),
        "rss_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
    }
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_issue_12_distance_scan_and_map_memory_is_bounded_by_what_is_held():
    """Issue 12 (memory): distance, scan(distance=True) and map on a 100,000-instrument,
    500-underlying book with one account and one position run within a 3 GiB address-space cap,
    grow peak RSS by under 128 MiB (standard) / 512 MiB (both models), and give the exact answer (move −30/190 on U007)."""
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"child failed ({proc.returncode}): {proc.stderr[-2000:]}"
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    for model in ("standard", "portfolio"):
        r = result[model]
        [(underlying, down, up)] = r["distance"]
        assert underlying == "U007" and up is None
        if model == "standard":
            assert down == pytest.approx(-30.0 / 190.0, abs=1e-12)
        assert down < 0.0
        assert r["nearest"] == ["U007", down]
        assert r["map_rows"] == 500 * 201 and r["map_accounts"] == 1
    # the walk itself holds a few MB here; the portfolio margin run beside it keeps every
    # instrument's risk arrays (65 floats each, ~50 MB), which the old walk's 80 GB dwarfed
    assert result["standard"]["rss_growth_kib"] < 128 * 1024, result
    assert result["portfolio"]["rss_growth_kib"] < 512 * 1024, result
