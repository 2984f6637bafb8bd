"""What a run shows people: report/ (plots, tables, report.html) and TensorBoard logs/."""

from __future__ import annotations

import base64
import csv
import html
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, tiny_backbone, write_folder
from PIL import Image

import keras_ft
from keras_ft.cli.main import main
from keras_ft.runs.report import (
    MAX_CORRECT,
    confident_mistakes,
    correct_sample,
    plot_confusion,
    write_report,
)
from keras_ft.utils.plots import PLOTS_HINT

CLASSES = ("red", "green", "blue")


def event_steps(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the TensorBoard event files under `folder`."""
    import tensorflow as tf

    steps: dict[str, dict[int, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # summary_iterator is deprecated, still the plain reader
        for path in sorted(folder.glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    number = float(tf.make_ndarray(value.tensor))
                    steps.setdefault(value.tag, {})[event.step] = number
    return steps


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A real `keras-ft train` (tiny: the test plugin's testnet, untrained, 32 px, 1 + 1 epochs)."""
    root = tmp_path_factory.mktemp("report")
    write_folder(root / "train", CLASSES, per_class=16, seed=1)
    write_folder(root / "test", CLASSES, per_class=4, seed=2)
    output = root / "run"
    result = run_cli(
        "train",
        root / "train",
        "--test-dir",
        root / "test",
        *("--backbone", "testnet", "--weights", "none", "--image-size", "32"),
        *("--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "8"),
        *("--output", output),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, output


def test_report_plots_decode_and_are_embedded_in_the_html(cli_run):
    result, output = cli_run
    report = output / "report"
    assert f"report: {report / 'report.html'}" in result.stdout
    page = (report / "report.html").read_text(encoding="utf-8")
    plots = ["curves.png", "confusion_matrix.png"]
    if "No test image was misclassified" not in page:
        plots.append("mistakes.png")
    if "No test image was classified correctly" not in page:
        plots.append("correct.png")
    for name in plots:
        with Image.open(report / name) as image:
            image.load()  # decodes the whole file
            assert image.format == "PNG" and min(image.size) > 50
        embedded = base64.b64encode((report / name).read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{embedded}" in page, name
    assert 'src="http' not in page and "<link" not in page  # nothing to fetch: opens offline
    for text in (
        "Training curves",
        "Per class",
        "Confusion matrix",
        "Most confidently wrong",
        "Correctly classified: where the model looked",
    ):
        assert text in page
    assert all(f"<td>{name}</td>" in page for name in CLASSES)
    assert "test accuracy" in page and "test top-" not in page  # 3 classes: top-3 is always 1
    assert PLOTS_HINT not in html.unescape(page)
    assert (report / "per_class.csv").read_text().splitlines()[0] == (
        "class,precision,recall,f1,support"
    )


def test_tensorboard_logs_cover_both_phases_on_one_epoch_axis(cli_run):
    _, output = cli_run
    train = event_steps(output / "logs" / "train")
    validation = event_steps(output / "logs" / "validation")
    for tags in (train, validation):
        assert sorted(tags["epoch_loss"]) == [0, 1]  # head epoch 0, fine-tune epoch 1
        assert sorted(tags["epoch_accuracy"]) == [0, 1]
    # Each phase wrote its own epoch: Adam at head_lr, then SGD at finetune_lr.
    assert train["epoch_learning_rate"] == pytest.approx({0: 1e-3, 1: 1e-4})
    assert not (output / "checkpoints").exists()


@pytest.fixture(scope="module")
def tuner(tmp_path_factory):
    """A tiny in-process fit (cached features in phase 1, so the head trains as its own model)."""
    root = tmp_path_factory.mktemp("tiny")
    write_folder(root / "train", CLASSES, per_class=16, seed=1)
    write_folder(root / "test", CLASSES, per_class=4, seed=2)
    data = keras_ft.ImageFolder(
        root / "train", test_dir=root / "test", image_size=32, batch_size=8, augment=False
    )
    tuner = keras_ft.FineTuner(tiny_backbone(32), preprocessing="tf", seed=1)
    tuner.fit(data, head_epochs=2, finetune_epochs=1, verbose=0)
    return tuner


def test_feature_cached_head_phase_logs_on_the_same_axis(tuner, tmp_path):
    run = Path(tuner.save(tmp_path / "run"))
    assert sorted(event_steps(run / "logs" / "train")["epoch_loss"]) == [0, 1, 2]
    assert sorted(event_steps(run / "logs" / "validation")["epoch_loss"]) == [0, 1, 2]
    assert (run / "report" / "report.html").is_file()


def test_without_matplotlib_the_report_keeps_its_tables_and_says_how_to_get_plots(
    tuner, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.warns(UserWarning, match=r"keras-ft\[plots\]"):
        path = write_report(tuner, tmp_path / "report")
    page = html.unescape(path.read_text(encoding="utf-8"))
    assert PLOTS_HINT in page and 'pip install "keras-ft[plots]"' in page
    assert not (tmp_path / "report" / "curves.png").exists()
    assert not (tmp_path / "report" / "confusion_matrix.png").exists()
    for text in ("per-epoch history", "Per class", "precision", "true \\ predicted"):
        assert text in page
    assert all(f"<td>{name}</td>" in page for name in CLASSES)
    if tuner.metrics["accuracy"] < 1:  # the mistakes grid is drawn with Pillow: still there
        with Image.open(tmp_path / "report" / "mistakes.png") as image:
            image.load()


def test_no_tensorboard_writes_no_logs(tmp_path):
    write_folder(tmp_path / "train", CLASSES[:2], per_class=8)
    data = keras_ft.ImageFolder(tmp_path / "train", image_size=32, batch_size=4, augment=False)
    tuner = keras_ft.FineTuner(tiny_backbone(32), preprocessing="tf", seed=1)
    tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0, tensorboard_dir=None)
    run = Path(tuner.save(tmp_path / "run"))
    assert not (run / "logs").exists()
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "No test results" in page  # no test_dir: said, not an error


def test_confident_mistakes_come_most_confident_first():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.95, 0.05]])
    labels = np.array([1, 1, 0, 1])
    assert confident_mistakes(probabilities, labels).tolist() == [3, 0, 2]
    assert confident_mistakes(probabilities, labels, count=1).tolist() == [3]


# Folder names a user may have, each harmful somewhere: matplotlib mathtext, a terminal
# escape sequence, a spreadsheet formula.
AWKWARD = ("$\\bad{x}$", "\x1b[31mred", "=1+1")


def test_class_names_are_shown_safely_on_the_terminal_in_the_csv_plots_and_html(tmp_path, capsys):
    write_folder(tmp_path / "train", AWKWARD, per_class=8, size=32, seed=1)
    write_folder(tmp_path / "test", AWKWARD, per_class=3, size=32, seed=2)
    output = tmp_path / "run"
    args = "--backbone testnet --weights none --image-size 32 --batch-size 8".split()
    args += ["--head-epochs", "1", "--finetune-epochs", "0", "--test-dir", tmp_path / "test"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([str(a) for a in ("train", tmp_path / "train", *args, "--output", output)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert not [w for w in caught if "Report:" in str(w.message) or "Glyph" in str(w.message)]
    # printed escaped, never raw (Keras's progress bars have escape sequences of their own)
    assert "\x1b[31mred" not in out + err
    classes = next(line for line in out.splitlines() if line.startswith("classes (3): "))
    assert sorted(classes.removeprefix("classes (3): ").split(", ")) == sorted(
        ["$\\bad{x}$", "\\x1b[31mred", "=1+1"]
    )
    assert "\\x1b[31mred" in out.split("confusion matrix")[-1]  # the metrics table too
    report = output / "report"
    with Image.open(report / "confusion_matrix.png") as image:  # mathtext off: it is drawn
        image.load()
    with (report / "per_class.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert sorted(row[0] for row in rows[1:]) == sorted(["$\\bad{x}$", "\x1b[31mred", "'=1+1"])
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "\x1b" not in page and "\\x1b[31mred" in page and "$\\bad{x}$" in page


def test_plot_confusion_draws_dollar_signs_and_backslashes_literally():
    png = plot_confusion([[1, 0], [0, 1]], ["$\\bad{x}$", "a$\\x$ b"])
    assert png.startswith(b"\x89PNG")


def test_mistakes_grid_draws_each_heatmap_below_its_image(tmp_path):
    from keras_ft.runs.report import _TILE, heat_overlay, labelled_grid

    pixels = np.full((32, 32, 3), 128, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    heatmap = np.zeros((32, 32), np.float32)
    heatmap[:, :16] = 1.0  # all the heat on the left half
    args = ([tmp_path / "a.png"], ["cat"], ["dog"], [0.9])
    plain = labelled_grid(*args)
    with_heat = labelled_grid(*args, overlays=[heat_overlay(pixels, heatmap)])
    assert with_heat.height == plain.height + _TILE + 4
    row = np.asarray(with_heat)[4 + _TILE + 4 : 4 + 2 * _TILE + 4, 4 : 4 + _TILE].astype(int)
    redness = row[..., 0] - row[..., 1]
    assert redness[:, : _TILE // 2].mean() > 100 and redness[:, 3 * _TILE // 4 :].max() == 0


def test_heat_overlays_of_a_trained_run(tuner):
    from keras_ft.runs.report import _heat_overlays

    paths = [f.path for f in tuner.data.test_files[:3]]
    overlays = _heat_overlays(tuner.model, paths)
    assert [o.size for o in overlays] == [(32, 32)] * 3


def test_correct_sample_is_seeded_and_holds_only_correct_predictions():
    labels = np.random.default_rng(0).integers(0, 3, 40)
    probabilities = np.eye(3)[labels]
    probabilities[::2] = np.eye(3)[(labels[::2] + 1) % 3]  # the even images are wrong
    sample = correct_sample(probabilities, labels, seed=1)
    assert len(sample) == MAX_CORRECT and set(sample) <= set(range(1, 40, 2))
    assert sample.tolist() == sorted(sample)
    assert np.array_equal(sample, correct_sample(probabilities, labels, seed=1))
    assert not np.array_equal(sample, correct_sample(probabilities, labels, seed=2))
    assert correct_sample(probabilities[:6], labels[:6], seed=1).tolist() == [1, 3, 5]


@pytest.fixture(scope="module")
def good_tuner(tmp_path_factory):
    """A tiny fit that gets more test images right than the report's sample shows."""
    root = tmp_path_factory.mktemp("good")
    write_folder(root / "train", CLASSES, per_class=16, seed=1)
    write_folder(root / "test", CLASSES, per_class=6, seed=2)
    data = keras_ft.ImageFolder(
        root / "train", test_dir=root / "test", image_size=32, batch_size=8, augment=False
    )
    tuner = keras_ft.FineTuner(tiny_backbone(32), preprocessing="tf", seed=1)
    tuner.fit(data, head_epochs=3, finetune_epochs=0, head_lr=0.01, verbose=0)
    return tuner


def test_report_shows_a_seeded_sample_of_correct_images_with_heatmaps(
    good_tuner, tmp_path, monkeypatch
):
    from keras_ft.runs.evaluation import predict_dataset
    from keras_ft.runs.report import _CAPTION, _TILE

    tuner = good_tuner
    probabilities, labels = predict_dataset(tuner.model, tuner.data.test)
    right = int((probabilities.argmax(axis=1) == labels).sum())
    assert right > MAX_CORRECT  # so the sample is a real draw, not all of them
    first = write_report(tuner, tmp_path / "a").parent / "correct.png"
    again = write_report(tuner, tmp_path / "b").parent / "correct.png"
    assert first.read_bytes() == again.read_bytes()  # the same images, the same heatmaps
    monkeypatch.setattr(tuner, "seed", tuner.seed + 1)
    other = write_report(tuner, tmp_path / "c").parent / "correct.png"
    assert first.read_bytes() != other.read_bytes()  # another seed, another sample
    with Image.open(first) as grid:
        grid.load()
        # 12 tiles in 2 rows of 6, each: the image, its heatmap below it, two caption lines
        assert grid.size == (6 * (_TILE + 8), 2 * (2 * _TILE + 4 + _CAPTION + 8))
    page = (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    embedded = base64.b64encode(first.read_bytes()).decode("ascii")
    assert f"data:image/png;base64,{embedded}" in page
    assert f"{MAX_CORRECT} of the {right} correctly classified test images" in page
