"""The learning-rate range test: the sweep, its suggestion, and `"auto"` learning rates in fit."""

import numpy as np
import pytest
from conftest import TINY_TRAIN, tiny_backbone

import keras_ft
from keras_ft.cli.main import main
from keras_ft.config import TrainingConfig
from keras_ft.training.lr_find import LRFinderResult, _suggest, sweep
from keras_ft.utils.errors import KerasFTError


def test_suggestion_is_a_tenth_of_the_rate_at_the_lowest_smoothed_loss():
    rates = list(np.logspace(-6, 0, 61))
    # Flat, then falling fastest around 1e-4, lowest at 1e-2, then diverging.
    smoothed = [2.0 - 1.5 / (1 + np.exp(-4 * (np.log10(r) + 4))) for r in rates]
    smoothed = [
        s + (10 * (np.log10(r) + 2) ** 2 if r > 1e-2 else 0.0)
        for s, r in zip(smoothed, rates, strict=True)
    ]
    result = _suggest(LRFinderResult("head", rates, smoothed, smoothed))
    assert result.suggestion == pytest.approx(1e-3)
    assert result.steepest == pytest.approx(1e-4)
    with pytest.raises(KerasFTError, match="diverged after 2 steps"):
        _suggest(LRFinderResult("head", rates[:2], smoothed[:2], smoothed[:2]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import write_folder

    root = tmp_path_factory.mktemp("lr") / "train"
    folder = write_folder(root, ("red", "green", "blue"), per_class=12, seed=1)
    return keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25, seed=0)


def test_sweep_grows_the_rate_exponentially_and_restores_every_variable(data):
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    model = tuner.build(data.image_size, data.num_classes)
    before = [np.array(v) for v in model.variables]  # BatchNorm statistics, seed states too
    result = sweep(model, data, "head", TrainingConfig(), 1e-5, 10.0, steps=60)
    ratios = np.diff(np.log(result.learning_rates))
    np.testing.assert_allclose(ratios, np.log(1e6) / 59, rtol=1e-6)
    assert result.learning_rates[0] == 1e-5 and len(result.losses) <= 60
    assert result.suggestion == pytest.approx(
        result.learning_rates[10 + int(np.argmin(result.smoothed[10:]))] / 10  # past 10 steps
    )
    assert min(result.smoothed) < result.smoothed[0]  # the loss did fall somewhere
    for variable, value in zip(model.variables, before, strict=True):
        np.testing.assert_array_equal(np.array(variable), value)


def test_auto_learning_rates_are_found_recorded_and_replay_bitwise(data, capsys):
    auto = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    auto.fit(data, head_epochs=1, finetune_epochs=1, head_lr="auto", finetune_lr="auto", verbose=2)
    decisions = auto.record["decisions"]
    head, tuned = decisions["head_lr"]["suggestion"], decisions["finetune_lr"]["suggestion"]
    assert 0 < head < 10 and 0 < tuned < 10
    out = capsys.readouterr().out
    assert "head_lr='auto': the learning-rate range test" in out
    assert f"suggests {tuned:.3g}" in out
    assert float(auto.model.optimizer.learning_rate) == pytest.approx(tuned)  # phase 2 used it
    # The sweeps leave no trace: the found numbers, given directly, train the same weights.
    given = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    given.fit(data, head_epochs=1, finetune_epochs=1, head_lr=head, finetune_lr=tuned, verbose=0)
    for a, b in zip(auto.model.get_weights(), given.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(KerasFTError, match="Invalid `head_lr`: expected a float > 0, or 'auto'"):
        given.fit(data, head_lr="fast", verbose=0)


def test_lr_find_command_writes_the_plot_and_suggests(data, tmp_path, capsys):
    plot = tmp_path / "lr.png"
    args = ["lr-find", data.config.directory, *TINY_TRAIN, "--batch-size", "8"]
    code = main(
        [*args, "--steps", "30", "--phase", "finetune", "--head-epochs", "1", "--output", str(plot)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "suggested --finetune-lr: " in out and "steepest descent: " in out
    assert main([*args, "--steps", "30", "--output", str(plot)]) == 2  # kept, not overwritten
    assert "already exists" in capsys.readouterr().err


def test_lr_find_sweeps_the_batches_fit_trains_on(data):
    """`flip="auto"` and `quarter_turns="auto"` are decided before the sweep, as `fit`
    decides them: the range test of `lr_find` and that of `head_lr="auto"` see the same
    (here flipped and turned) batches and suggest the same rate."""
    auto = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    auto.fit(data, head_epochs=1, finetune_epochs=0, head_lr="auto", recipe=None, verbose=0)
    decisions = auto.record["decisions"]
    assert decisions["flip"]["flip"] and decisions["quarter_turns"]["quarter_turns"]
    found = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0).lr_find(data, verbose=0)
    assert found.suggestion == decisions["head_lr"]["suggestion"]
