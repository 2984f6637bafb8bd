"""`keras-ft tune` / `keras_ft.tune`: a KerasTuner search over whole two-phase fits."""

import contextlib
import csv
import io
import json
import sys

import pytest
from conftest import write_folder
from test_cli import assert_clean_failure, run_here

import keras_ft
from keras_ft.cli.main import main
from keras_ft.tools.search_space import SETTINGS

pytest.importorskip("keras_tuner")

# Tiny and fast: the test plugin's untrained testnet at 32 px, one epoch per phase.
FAST = (
    "--backbone",
    "testnet",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--validation-split",
    "0.25",
    "--head-epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--seed",
    "7",
)
SCORES = ("val_accuracy", "val_loss")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    return write_folder(tmp / "train", per_class=12, seed=1), write_folder(
        tmp / "test", per_class=3
    )


@pytest.fixture(scope="module")
def search(folders, tmp_path_factory):
    """One two-trial random search from the command line, run in this process."""
    train, test = folders
    output = tmp_path_factory.mktemp("search") / "out"
    out, err = io.StringIO(), io.StringIO()  # a module fixture cannot use capsys
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            ["tune", str(train), "--test-dir", str(test), *FAST, "--trials", "2"]
            + ["--head-lr-range", "1e-4", "1e-2", "--weight-decay", "0.001"]
            + ["--output", str(output), "--quiet"]
        )
    return code, out.getvalue(), err.getvalue(), output


def test_search_records_every_trial_and_keeps_the_best(search):
    code, stdout, stderr, output = search
    assert code == 0, stderr
    rows = json.loads((output / "trials.json").read_text())
    assert [row["trial"] for row in rows] == [1, 2]
    with open(output / "trials.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(row["trial"]) for row in table] == [1, 2]
    for row, line in zip(rows, table, strict=True):
        assert row["status"] == "COMPLETED" and 0.0 <= row["val_accuracy"] <= 1.0
        assert 1e-4 <= row["head_lr"] <= 1e-2 and 1e-5 <= row["finetune_lr"] <= 1e-3
        assert row["unfreeze"] in ("all", "conv_b")
        assert 0.0 <= row["dropout"] <= 0.5 and row["dense_units"] in (0, 128, 256)
        assert 0.0 <= row["augment_strength"] <= 2.0
        for key in (*SETTINGS, *SCORES):  # the CSV holds the same values, in full precision
            assert line[key] == str(row[key])
    assert rows[0]["head_lr"] != rows[1]["head_lr"]  # two different settings were tried
    best = [row for row in rows if row["best"]]
    assert len(best) == 1 and best[0]["val_accuracy"] == max(r["val_accuracy"] for r in rows)

    summary = json.loads((output / "search.json").read_text())
    assert summary["search"] == "random" and summary["trials_run"] == 2
    assert summary["space"]["head_lr"] == {"type": "log_range", "low": 1e-4, "high": 1e-2}
    assert summary["best"]["trial"] == best[0]["trial"] and summary["best"]["run_dir"] == "best"
    assert summary["fixed"]["weight_decay"] == 0.001 and summary["fixed"]["momentum"] == 0.9
    assert "<- best" in stdout and f"best run directory: {output / 'best'}" in stdout
    # KerasTuner's own files went to a temporary folder, now removed.
    assert sorted(p.name for p in output.iterdir()) == [
        "best",
        "search.json",
        "trials.csv",
        "trials.json",
    ]

    # The best trial's settings are in its run record: an ordinary, reproducible run.
    record = json.loads((output / "best" / "run.json").read_text())
    assert record["training"]["head_lr"] == best[0]["head_lr"]
    assert record["training"]["unfreeze"] == best[0]["unfreeze"]
    assert record["model"]["dropout"] == best[0]["dropout"]
    assert record["training"]["weight_decay"] == 0.001  # a fixed training flag, in every trial
    assert record["data"]["rotation"] == pytest.approx(0.05 * best[0]["augment_strength"])


def test_best_run_loads_and_predicts(search, folders, capsys):
    _, _, _, output = search
    predictor = keras_ft.load(output / "best")
    assert predictor.class_names == ("cat", "dog")
    image = sorted((folders[1] / "dog").iterdir())[0]
    result = run_here(capsys, "predict", output / "best", image)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["label"] in ("cat", "dog")


def test_same_seed_gives_the_same_trials_and_scores(search, folders, tmp_path):
    _, _, _, output = search
    train, test = folders
    data = keras_ft.ImageFolder(
        train, test_dir=test, image_size=32, batch_size=8, validation_split=0.25, seed=7, quiet=True
    )
    again = keras_ft.tune(
        data,
        tmp_path / "again",
        trials=2,
        seed=7,
        head_lr=(1e-4, 1e-2),
        backbone="testnet",
        weights=None,
        head_epochs=1,
        finetune_epochs=1,
        weight_decay=0.001,
        verbose=0,
    )
    first = json.loads((output / "trials.json").read_text())
    keys = ("trial", *SETTINGS, *SCORES, "best")
    assert [{k: r[k] for k in keys} for r in again.trials] == [
        {k: r[k] for k in keys} for r in first
    ]
    assert again.best_trial["trial"] == next(r["trial"] for r in first if r["best"])


BAD_SEARCHES = {
    "inverted range": (["--head-lr-range", "1e-2", "1e-4"], ["`head_lr`", "inverted"]),
    "empty range": (["--dropout-range", "0.3", "0.3"], ["`dropout`", "empty", "--dropout-range"]),
    "empty choices": (["--unfreeze-choices"], ["`unfreeze`", "at least one choice"]),
    "zero trials": (["--trials", "0"], ["`trials`", "an int >= 1", "received 0"]),
    "unknown search": (["--search", "genetic"], ["`search`", "'bayesian'", "'genetic'"]),
    "fixed and searched at once": (
        ["--dropout", "0.1", "--dropout-range", "0", "0.5"],
        ["not both"],
    ),
    "no validation split": (["--validation-split", "0"], ["`validation_split`", "validation"]),
    "unknown unfreeze layer": (["--unfreeze-choices", "all", "block9_conv9"], ["'block9_conv9'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SEARCHES))
def test_bad_search_input_exits_2_with_a_clear_message(case, folders, tmp_path, capsys):
    args, fragments = BAD_SEARCHES[case]
    output = tmp_path / "out"
    result = run_here(capsys, "tune", folders[0], *FAST, "--output", output, *args)
    assert_clean_failure(result, *fragments)
    assert not output.exists()


def test_python_api_names_the_argument(folders, tmp_path):
    with pytest.raises(keras_ft.KerasFTError, match="`finetune_lr`.*empty"):
        keras_ft.tune(folders[0], tmp_path / "x", finetune_lr=())
    with pytest.raises(keras_ft.KerasFTError, match="`dense_units`.*at least one choice"):
        keras_ft.tune(folders[0], tmp_path / "x", dense_units=[])
    with pytest.raises(keras_ft.KerasFTError, match="unknown argument `lerning_rate`"):
        keras_ft.tune(folders[0], tmp_path / "x", lerning_rate=0.1)
    assert not (tmp_path / "x").exists()


def test_without_keras_tuner_the_message_says_what_to_install(folders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # import keras_tuner now fails
    with pytest.raises(keras_ft.KerasFTError, match=r'pip install "keras-ft\[tune\]"'):
        keras_ft.tune(folders[0], tmp_path / "x")
