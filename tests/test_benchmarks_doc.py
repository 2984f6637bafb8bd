"""BENCHMARKS.md is generated: it is what `python -m bench.report --write` writes from the
results files committed in bench/results/, it stays short, and a results file that
appears brings its section. Nothing here trains or imports TensorFlow itself."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from bench import report
from bench.quality import summary, targets

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
HISTORY = ROOT / "docs" / "benchmark-history.md"


def test_benchmarks_md_is_what_the_committed_results_give():
    expected = report.render(report.read_results())
    actual = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
    if actual != expected:
        diff = difflib.unified_diff(
            actual.splitlines(), expected.splitlines(), "BENCHMARKS.md", "generated", lineterm=""
        )
        pytest.fail(
            "BENCHMARKS.md is stale against the results files committed in bench/results/: "
            f"run `{report.COMMAND}` (make bench-report) and commit it.\n"
            + "\n".join(list(diff)[:30])
        )


def test_benchmarks_md_is_at_most_400_lines():
    lines = len(BENCHMARKS.read_text().splitlines())
    assert lines <= 400, f"BENCHMARKS.md has {lines} lines: keep the current results to 400"


def quality_row(method, task, per_class, seed, test, **extra):
    split = {"split": "by-simulation"} if task in ("ising", "cahn_hilliard") else {}
    return {"mode": "full", "task": task, **split, "per_class": per_class, "method": method,
            "seed": seed, "test_accuracy": test, "val_accuracy": test, "wall_s": 100.0,
            "cpu_s": 90.0, "load_before": [1.5, 1.0, 1.0], "commit": "abc1234",
            "date": "2026-12-06 10:00", **extra}  # fmt: skip


def flip_row(task, seed, backbone=None):
    row = {"task": task, "per_class": 10, "seed": seed, "retained": 0.8, "retained_grid": 0.4,
           "flip": True, "quarter_turns": True, "classes": 2, "validation_images": 4,
           "validation_accuracy": 1.0, "mirrored_validation_accuracy": 1.0}  # fmt: skip
    return row if backbone is None else {**row, "backbone": backbone}


def test_a_section_is_left_out_until_its_results_file_exists():
    empty = report.render({})
    for section in report.SECTIONS:
        assert f"## {section.title}\n" not in empty
        assert f"bench/results/{section.file}" not in empty
    assert "## Benchmarks whose results are not committed" in empty  # listed with commands
    assert "`pipeline`: Input pipeline throughput" in empty

    rows = [
        quality_row("lite0-probe", "mnist", 100, 0, 0.900),
        quality_row("lite0-auto", "mnist", 100, 0, 0.985, wall_s=300.0),
    ]
    text = report.render({"quality-lite0.jsonl": rows})
    assert "## Quality on held-out tasks, EfficientNet-Lite0\n" in text
    assert "[`bench/results/quality-lite0.jsonl`](bench/results/quality-lite0.jsonl)" in text
    assert "2 rows; dated 2026-12-06; at commit abc1234; 1-minute load average" in text
    assert (
        "- `lite0-auto` beats `lite0-probe` (same seeds) on every task and size measured (1): yes"
        in text.splitlines()
    )
    assert "## Quality on held-out tasks\n" not in text  # quality.jsonl's own section


def test_the_quality_section_shows_the_current_methods_only():
    rows = [
        quality_row("probe", "ising", 10, 0, 0.90),
        quality_row("auto", "ising", 10, 0, 0.95, commit_note="not in the repository"),
        quality_row("auto-v2", "ising", 10, 0, 0.50),  # an earlier `auto`, renamed
    ]
    text = report.render({"quality.jsonl": rows})
    assert "| ising | 10 | auto † | 0.950 |" in text  # a lost commit keeps its mark
    assert "auto-v2 |" not in text
    assert "The file also holds 1 row of 1 other method " in text
    assert "- `auto` beats the probe (same seeds) on every task and size measured (1): yes" in text


def test_a_committed_results_file_without_a_section_is_listed():
    text = report.render({"new-benchmark.jsonl": [{"commit": "abc1234"}]})
    assert "## Other results files" in text
    assert (
        "[`bench/results/new-benchmark.jsonl`](bench/results/new-benchmark.jsonl): 1 row;" in text
    )


def test_the_candidates_and_flip_sections_use_their_benchmarks_reports():
    demo = [
        quality_row("d-a", "mnist", 30, 0, 0.90, selection_accuracy=0.91),
        quality_row("d-b", "mnist", 30, 0, 0.95, selection_accuracy=0.93, wall_s=50.0),
        quality_row("d-a", "digits", 30, 0, 0.90, selection_accuracy=0.97, wall_s=200.0),
    ]
    grid = [flip_row("ising", 0), flip_row("ising", 0, "efficientnet_lite0")]
    text = report.render({"demo.jsonl": demo, "mnist100-target.jsonl": demo[1:2],
                          "flips-grid.jsonl": grid, "turns-grid.jsonl": grid})  # fmt: skip
    assert "--methods d-a d-b --results bench/results/demo.jsonl" in text
    target = text.split("## MNIST 100/class in under 5 minutes", 1)[1]
    assert "--methods d-b --results bench/results/mnist100-target.jsonl" in target
    # Each method once, by its mean over the tasks it ran: d-a (0.91 + 0.97) / 2.
    order = "ran (mean wall seconds): `d-a` 0.940 (150 s), `d-b` 0.930 (50 s)."
    assert order in text
    assert "| ising (efficientnet_lite0) | 10 | 0.80 | 0.40 | yes |" in text  # flips
    assert "| ising | 10 | 0.80 | 0.40 | yes | 0 |" in text  # quarter turns
    assert "2 rows; no machine, date, commit or load recorded" in text


def test_quality_targets_take_the_probes_method_name():
    rows = [
        quality_row("lite0-probe", "ising", 30, 0, 0.90),
        quality_row("lite0-auto", "ising", 30, 0, 0.92),
        quality_row("probe", "ising", 30, 0, 0.99),  # another backbone's probe: not compared
    ]
    assert targets(summary(rows), ours="lite0-auto", probe="lite0-probe") == [
        "- `lite0-auto` beats `lite0-probe` (same seeds) on every task and size measured (1): yes",
        "- mean margin over `lite0-probe`: +2.0 points (NOT met (target >= 3))",
    ]


def test_the_history_moved_to_docs_and_is_linked():
    history = HISTORY.read_text()
    assert history.startswith("# keras_ft benchmark history\n")
    assert "## Quality on held-out tasks (issue 14)" in history  # the dated rounds, as they were
    page = BENCHMARKS.read_text()
    assert "[docs/benchmark-history.md](docs/benchmark-history.md)" in page
    assert "](BENCHMARKS.md)" in (ROOT / "README.md").read_text()


def test_a_sections_rows_name_the_cpus_they_record_and_how_many_do():
    from bench.report import recorded

    rows = [{"cpu": "AMD EPYC, AVX2"}, {"machine": "Intel Xeon, 2 cores"}, {}]
    assert recorded(rows).startswith(
        "3 rows; machine AMD EPYC, AVX2; Intel Xeon, 2 cores (2 of the rows; none for the rest)"
    )
