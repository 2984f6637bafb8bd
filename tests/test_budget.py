"""keras_ft.training.budget: the epochs of both phases planned to end within a time budget,
from measured steps that leave no trace, recorded, and replayed by `reproduce`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from conftest import DIGITS, TINY_TRAIN, run_cli, tiny_backbone, write_folder

import keras_ft
from keras_ft.cli.main import main
from keras_ft.config import TrainingConfig, parse_duration
from keras_ft.training.budget import MARGIN, plan_epochs

EPOCHS = {"head": 10, "finetune": 20}
PER_EPOCH = {"head": 1.0, "finetune": 4.0}  # seconds: 10 + 80 = 90 s in all


def test_plan_keeps_epochs_that_fit_and_shortens_both_phases_alike():
    assert plan_epochs(100 / MARGIN + 5, EPOCHS, PER_EPOCH, fixed_s=5) == EPOCHS
    # 50 of the 90 s needed: 5/9 of the epochs of each phase, rounded down.
    assert plan_epochs(50 / MARGIN + 5, EPOCHS, PER_EPOCH, fixed_s=5) == {"head": 5, "finetune": 11}
    # No time at all: one epoch of phase 1 (it had some), none of phase 2; without phase 1,
    # one epoch of phase 2 (a run trains at least one epoch).
    assert plan_epochs(1.0, EPOCHS, PER_EPOCH, fixed_s=30) == {"head": 1, "finetune": 0}
    no_head = {"head": 0, "finetune": 20}
    assert plan_epochs(1.0, no_head, PER_EPOCH, 30) == {"head": 0, "finetune": 1}


def test_time_budget_takes_seconds_or_a_duration():
    assert [parse_duration(text) for text in ("90", "90s", "5m", "1.5h")] == [90, 90, 300, 5400]
    with pytest.raises(
        argparse.ArgumentTypeError, match="such as 90s, 5m or 1.5h, received 'soon'"
    ):
        parse_duration("soon")
    with pytest.raises(keras_ft.KerasFTError, match="Invalid `time_budget`: expected None or"):
        TrainingConfig(time_budget=-5)
    # Each worker would time its own steps: they could plan other epochs and never meet.
    with pytest.raises(keras_ft.KerasFTError, match="None with strategy='multiworker'"):
        TrainingConfig(time_budget=60, strategy="multiworker")


def _fit(folder, **options):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25, seed=0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=2, finetune_epochs=3, recipe=None, verbose=0, **options)
    return tuner


def test_timing_the_steps_leaves_no_trace_and_a_short_budget_shortens(tmp_path):
    """A budget the configured epochs fit in trains bitwise as no budget (the timed steps
    are undone); one they do not fit in trains fewer epochs, as planned and recorded."""
    folder = write_folder(tmp_path / "data", per_class=8, size=32)
    plain, roomy = _fit(folder), _fit(folder, time_budget=3600)
    plan = roomy.record["decisions"]["time_budget"]
    assert (plan["head_epochs"], plan["finetune_epochs"]) == (2, 3)
    assert "the configured 2 + 3 epochs fit" in plan["reason"]
    assert "time_budget" not in plain.record["decisions"]
    weights = zip(plain.model.get_weights(), roomy.model.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in weights)
    tight = _fit(folder, time_budget=1e-3)
    plan = tight.record["decisions"]["time_budget"]
    assert (plan["head_epochs"], plan["finetune_epochs"]) == (1, 0)
    assert tight.history.history["phase"] == ["head"]
    assert "1 + 0 epochs instead of 2 + 3" in plan["reason"]
    assert not any("stopped early" in line for line in tight.advice)  # the plan, not a stop


def test_the_plan_counts_phase_1s_augmented_copies_as_fixed_and_its_epochs_as_the_heads(
    tmp_path, monkeypatch
):
    """With `head_copies`, phase 1's epochs cost head steps only, and the copies' backbone
    passes over the training images are paid once, before it (timings fixed here)."""
    from keras_ft.training import resolve

    step = {"head_step": 0.01, "finetune_step": 0.1, "forward_image": 0.001, "trace": 0.0}
    monkeypatch.setattr(resolve, "measure", lambda *args: dict(step))
    folder = write_folder(tmp_path / "data", per_class=8, size=32)
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25, seed=0)
    train, validation = len(data.train_files), len(data.validation_files)
    plans = {}
    for copies in (0, 2):
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(
            data,
            head_epochs=2,
            finetune_epochs=1,
            recipe=None,
            verbose=0,
            time_budget=3600,
            head_copies=copies,
        )
        plans[copies] = tuner.record["decisions"]["time_budget"]
    steps = data.steps_per_epoch
    assert plans[0]["epoch_seconds"]["head"] == pytest.approx(steps * 0.01 + validation * 0.001)
    assert plans[0]["fixed_seconds"] == pytest.approx(0.0)
    assert plans[2]["epoch_seconds"]["head"] == pytest.approx(steps * 0.01)
    # The copies' passes (`fit` computed the unaugmented features before, for its probe).
    assert plans[2]["fixed_seconds"] == pytest.approx(2 * train * 0.001)


def test_reproduce_replays_the_plan_of_a_time_budget(tmp_path, capsys):
    output = tmp_path / "run"
    options = "--recipe none --head-epochs 3 --finetune-epochs 2 --time-budget 0.001s"
    result = run_cli(
        "train", DIGITS / "train", *TINY_TRAIN, *options.split(), "--seed", "3", "--output", output
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((output / "run.json").read_text())
    assert record["training"]["time_budget"] == 0.001
    plan = record["decisions"]["time_budget"]
    assert (plan["head_epochs"], plan["finetune_epochs"]) == (1, 0)
    assert main(["reproduce", str(output), "--quiet"]) == 0  # the plan, not a new timing
    assert capsys.readouterr().out.splitlines()[-1] == "MATCH"
