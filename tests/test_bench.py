"""The benchmark scripts still run: `python -m bench.run --tiny` prints every result table.

Tiny sizes, all in one process, so the figures mean nothing and nothing here checks
them; the timings live in BENCHMARKS.md, measured by `make bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

SECTIONS = {
    "### Input pipeline throughput": "| pipeline | images/s |",
    "### Feature cache for phase 1": "| phase 1 | phase-1 time (s) |",
    "### Overhead over a hand-written script": "| run | wall time (s) |",
    "### Memory": "| decoded training images |",
    "### CPU efficiency": "| setting | matmul |",
    "### GPU readiness": "| backbone | setting |",
}


def test_every_benchmark_prints_its_table(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--data", str(tmp_path / "data"),
         "--output", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for title, header in SECTIONS.items():
        section = done.stdout.split(title, 1)
        assert len(section) == 2, f"{title!r} missing from:\n{done.stdout}"
        assert header in section[1], f"{title!r} has no table {header!r}"
    written = (tmp_path / "out" / "results.md").read_text()
    assert all(title in written for title in SECTIONS)
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["mode"] == "tiny" and len(record["results"]) == len(SECTIONS)
