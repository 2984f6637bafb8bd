"""Results people can look at: the run report.

`write_report` is called by `keras_ft.runs.artifacts.save_run` and writes
`RUN_DIR/report/`:

    curves.png            loss and accuracy, train and validation, both phases on
                          one epoch axis with the phase boundary marked
    confusion_matrix.png  the test confusion matrix
    mistakes.png          the most confidently wrong test images, true and predicted labels,
                          each above its Grad-CAM heatmap (keras_ft.models.gradcam) in red
    correct.png           a seeded sample of correctly classified test images, each above
                          its Grad-CAM heatmap: does the model look at the object?
    per_class.csv         precision, recall, F1 and support per class
    report.html           all of the above on one self-contained page (images
                          embedded as base64): open it in a browser, no server needed

matplotlib draws the two plots; it is an optional extra (`pip install
"keras-ft[plots]"`). Without it the run still completes and `report.html` keeps
every table and says how to get the plots. The mistakes grid is drawn with
Pillow and is always there when there is a test set; so is the sample of
correct ones, where the backbone has a feature map for Grad-CAM.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from keras_ft.data.decode import pil_to_rgb
from keras_ft.models.probe import describe_probe
from keras_ft.runs.evaluation import predict_dataset, shows_top_k
from keras_ft.utils.plots import PLOTS_HINT, matplotlib_figure, png
from keras_ft.utils.text import csv_cell, printable

MAX_MISTAKES = 24
MAX_CORRECT = 12
_TILE, _CAPTION = 128, 34


def plot_curves(rows: list[dict]) -> bytes | None:
    """Loss and accuracy of both phases on one epoch axis, as PNG bytes (None without matplotlib).

    Args:
        rows: `TrainingHistory.rows`: one dict per epoch with `epoch` (1-based),
            `phase` and the Keras logs (`loss`, `accuracy`, `val_loss`, ...).
    """
    Figure = matplotlib_figure()
    if Figure is None or not rows:
        return None
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4))
    epochs = [row["epoch"] for row in rows]
    head = [row["epoch"] for row in rows if row["phase"] == "head"]
    tuned = [row["epoch"] for row in rows if row["phase"] != "head"]
    for axis, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for key, label, style in ((metric, "train", "o-"), (f"val_{metric}", "validation", "s--")):
            values = [row.get(key) for row in rows]
            if any(v is not None for v in values):
                values = [np.nan if v is None else v for v in values]
                axis.plot(epochs, values, style, markersize=3, label=label)
        if head and tuned:
            boundary = max(head) + 0.5
            axis.axvspan(min(head) - 0.5, boundary, color="grey", alpha=0.08, linewidth=0)
            axis.axvline(boundary, color="grey", linestyle=":", linewidth=1.5)
        on_top = axis.get_xaxis_transform()
        for phase, span in (("head", head), ("fine-tune", tuned)):
            if span:
                middle = (min(span) + max(span)) / 2
                axis.text(middle, 1.01, phase, transform=on_top, ha="center", color="grey")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return png(figure)


def plot_confusion(matrix, class_names) -> bytes | None:
    """The confusion matrix (rows true, columns predicted) as PNG bytes; None without matplotlib.

    Colours are per-row fractions (recall), so small classes show as clearly as
    large ones; the cells give the counts.
    """
    Figure = matplotlib_figure()
    if Figure is None:
        return None
    counts = np.asarray(matrix)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    side = min(4 + 0.45 * n, 24)
    figure = Figure(figsize=(side, side * 0.85))
    axis = figure.subplots()
    image = axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    labels = [printable(name) for name in class_names]
    long_names = n > 6 and max(len(label) for label in labels) > 3
    # Class names are data: "$x$" is drawn as it is, not parsed as mathtext.
    axis.set_xticks(
        range(n), labels=labels, rotation=90 if long_names else 0, fontsize=8, parse_math=False
    )
    axis.set_yticks(range(n), labels=labels, fontsize=8, parse_math=False)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if n <= 30:
        for (i, j), value in np.ndenumerate(counts):
            color = "white" if fractions[i, j] > 0.5 else "black"
            axis.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    return png(figure)


def confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, count: int = MAX_MISTAKES):
    """Indices of the wrong predictions, most confident first (at most `count`)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def correct_sample(
    probabilities: np.ndarray, labels: np.ndarray, seed: int, count: int = MAX_CORRECT
) -> np.ndarray:
    """Indices of up to `count` correct predictions, drawn with `seed`, in test-set order."""
    correct = np.flatnonzero(probabilities.argmax(axis=1) == labels)
    if len(correct) <= count:
        return correct
    return np.sort(np.random.default_rng(seed).choice(correct, count, replace=False))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the small bitmap font
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def heat_overlay(pixels: np.ndarray, heatmap: np.ndarray) -> Image.Image:
    """An RGB image with a [0, 1] heatmap of the same size laid over it in red."""
    alpha = 0.6 * heatmap[..., None]
    blended = pixels.astype(np.float32) * (1 - alpha) + np.array([255.0, 0, 0]) * alpha
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def labelled_grid(
    paths, true_names, predicted_names, confidences, columns: int = 6, overlays=None
) -> Image.Image:
    """A grid of image thumbnails, each captioned with its true and predicted label.

    `overlays`: one PIL image per path (its Grad-CAM heatmap over it), drawn
    below its thumbnail; `None` draws none.
    """
    columns = max(1, min(columns, len(paths)))
    rows = -(-len(paths) // columns)
    heat = _TILE + 4 if overlays is not None else 0
    width, height = _TILE + 8, _TILE + heat + _CAPTION + 8
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(11)
    for i, (path, true, predicted, confidence) in enumerate(
        zip(paths, true_names, predicted_names, confidences, strict=True)
    ):
        x, y = (i % columns) * width + 4, (i // columns) * height + 4
        try:
            with Image.open(path) as image:
                thumb = ImageOps.contain(Image.fromarray(pil_to_rgb(image)), (_TILE, _TILE))
            grid.paste(thumb, (x + (_TILE - thumb.width) // 2, y + (_TILE - thumb.height) // 2))
        except (OSError, ValueError):
            draw.rectangle((x, y, x + _TILE, y + _TILE), outline="grey")
        if overlays is not None:
            thumb = ImageOps.contain(overlays[i], (_TILE, _TILE))
            grid.paste(thumb, (x + (_TILE - thumb.width) // 2, y + _TILE + 4))
        caption = _fit_text(draw, f"true: {printable(true)}", font, _TILE)
        draw.text((x, y + _TILE + heat + 3), caption, "black", font)
        caption = _fit_text(draw, f"pred: {printable(predicted)} ({confidence:.2f})", font, _TILE)
        draw.text((x, y + _TILE + heat + 18), caption, (190, 20, 20), font)
    return grid


def _heat_overlays(model, paths) -> list[Image.Image] | None:
    """Each image with the Grad-CAM heatmap of its predicted class; None if there is no map."""
    from keras_ft.data.pipeline import read_images
    from keras_ft.models.gradcam import GradCAM
    from keras_ft.utils.errors import KerasFTError

    try:
        explainer = GradCAM(model)
    except KerasFTError:  # a custom backbone without a 4-D layer: the grid, without heatmaps
        return None
    pixels = read_images(paths, explainer.image_size)
    heatmaps, _ = explainer(pixels)
    return [heat_overlay(p, h) for p, h in zip(pixels, heatmaps, strict=True)]


def _grid_png(tuner, probabilities, labels, order, heatmaps_required: bool) -> bytes | None:
    """A PNG grid of the test images `order`, each above its heatmap where there is one.

    None when `order` is empty, or when `heatmaps_required` and the backbone has no feature map.
    """
    if not len(order):
        return None
    names = tuner.class_names
    predicted = probabilities.argmax(axis=1)
    paths = [tuner.data.test_files[i].path for i in order]
    overlays = _heat_overlays(tuner.model, paths)
    if overlays is None and heatmaps_required:
        return None
    grid = labelled_grid(
        paths,
        [names[labels[i]] for i in order],
        [names[predicted[i]] for i in order],
        [float(probabilities[i, predicted[i]]) for i in order],
        overlays=overlays,
    )
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def _test_grids(tuner) -> dict[str, bytes | None]:
    """`mistakes` (most confidently wrong first) and `correct` (a sample seeded by the run's
    seed) as PNG grids with Grad-CAM heatmaps; empty when there is no test set."""
    data = tuner.data
    if data is None or data.test is None or not data.test_files:
        return {}
    probabilities, labels = predict_dataset(tuner.model, data.test)
    mistakes = confident_mistakes(probabilities, labels)
    correct = correct_sample(probabilities, labels, tuner.seed)
    return {
        "mistakes": _safely(_grid_png, tuner, probabilities, labels, mistakes, False),
        "correct": _safely(_grid_png, tuner, probabilities, labels, correct, True),
    }


def _html(text) -> str:
    """Text for an HTML page: markup escaped, control characters shown as escapes."""
    return html.escape(printable(text))


def _table(header, rows, css: str = "") -> str:
    """An HTML table; no header row when `header` is None."""
    head = ""
    if header is not None:
        head = f"<thead><tr>{''.join(f'<th>{_html(h)}</th>' for h in header)}</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{_html(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}<tbody>{body}</tbody></table>'


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _image(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_html(alt)}" src="data:image/png;base64,{encoded}">'


def _summary_rows(tuner) -> list[tuple[str, object]]:
    model, training, data = tuner.model_config, tuner.training_config, tuner.data
    weights = model.weights or "none (random initialisation)"
    if getattr(tuner, "_backbone_model", None) is not None:
        weights = "your own backbone's"
    rows = [
        ("backbone", model.backbone),
        ("weights", weights),
        ("image size", "×".join(map(str, model.image_size))),
        ("classes", f"{len(tuner.class_names)}: {', '.join(tuner.class_names)}"),
    ]
    if data is not None:
        rows.append(("images", data.split_summary))
    if training is not None:
        rows += [
            ("head phase", f"{training.head_epochs} epochs, Adam lr {training.head_lr}"),
            (
                "fine-tune phase",
                f"{training.finetune_epochs} epochs, SGD lr {training.finetune_lr} momentum "
                f"{training.momentum}, unfreeze {training.unfreeze}",
            ),
        ]
    rows.append(("seed", tuner.seed))
    if tuner.record:
        rows += [
            ("finished", tuner.record.get("finished")),
            ("training time", f"{tuner.record.get('train_seconds')} s"),
        ]
        if tuner.record.get("linear_probe"):
            probe = describe_probe(tuner.record["linear_probe"], tuner.history.fine_tuned)
            rows.append(("linear probe", probe))
    if tuner.metrics is not None:
        m = tuner.metrics
        rows.append(("test accuracy", f"{m['accuracy']:.4f}"))
        if shows_top_k(m):
            rows.append((f"test top-{m['top_k']} accuracy", f"{m['top_k_accuracy']:.4f}"))
        rows += [("test loss", f"{m['loss']:.4f}"), ("test macro F1", f"{m['macro_f1']:.4f}")]
    return rows


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
table.run td { text-align: left; } table.run td:first-child { font-weight: 600; }
.hint { background: #fff6d5; border: 1px solid #e6c200; padding: 0.6em 1em; }
"""


def render_html(title, summary, rows, metrics, class_names, images, plots) -> str:
    """The report page. `images` maps a name to PNG bytes (or None); all are embedded."""
    parts = [f"<h1>{_html(title)}</h1>"]
    if not plots:
        parts.append(f'<p class="hint">{html.escape(PLOTS_HINT, quote=False)}</p>')
    parts.append("<h2>Run</h2>" + _table(None, summary, "run"))
    parts.append("<h2>Training curves</h2>")
    if images.get("curves"):
        parts.append(
            "<p>Both phases on one epoch axis; the dotted line is where the backbone "
            "was unfrozen.</p>" + _image(images["curves"], "training curves")
        )
    keys = list(dict.fromkeys(key for row in rows for key in row))
    parts.append(
        f"<details{' open' if len(rows) <= 20 else ''}><summary>per-epoch history</summary>"
        + _table(keys, ([_number(row.get(k, "")) for k in keys] for row in rows))
        + "</details>"
    )
    parts.append("<h2>Test set</h2>")
    if metrics is None:
        parts.append(
            "<p>No test results: pass <code>test_dir=</code> (<code>--test-dir</code>) to "
            "get the per-class table, the confusion matrix and the mistakes.</p>"
        )
    else:
        per_class = [
            (name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"])
            for name, r in metrics["per_class"].items()
        ]
        parts.append("<h3>Per class</h3>")
        parts.append(_table(("class", "precision", "recall", "F1", "support"), per_class))
        parts.append("<h3>Confusion matrix</h3><p>Rows: true class; columns: predicted.</p>")
        if images.get("confusion_matrix"):
            parts.append(_image(images["confusion_matrix"], "confusion matrix"))
        matrix = metrics["confusion_matrix"]
        parts.append(
            _table(
                ["true \\ predicted", *class_names],
                ([n, *r] for n, r in zip(class_names, matrix, strict=True)),
            )
        )
        parts.append("<h3>Most confidently wrong</h3>")
        wrong = int(np.sum(matrix) - np.trace(matrix))
        if not wrong:
            parts.append("<p>No test image was misclassified.</p>")
        elif images.get("mistakes"):
            parts.append(
                f"<p>{min(wrong, MAX_MISTAKES)} of the {wrong} misclassified test images, most "
                "confident first: true label, predicted label (probability); below each, where "
                "the backbone has a feature map, its Grad-CAM heatmap for the predicted class "
                "(red: where the model found that class).</p>"
                + _image(images["mistakes"], "most confidently wrong test images")
            )
        else:
            parts.append(f"<p>{wrong} misclassified test images (the grid could not be drawn).</p>")
        parts.append("<h3>Correctly classified: where the model looked</h3>")
        right = int(np.trace(matrix))
        if not right:
            parts.append("<p>No test image was classified correctly.</p>")
        elif images.get("correct"):
            parts.append(
                f"<p>{min(right, MAX_CORRECT)} of the {right} correctly classified test images, "
                "drawn at random with the run's seed, each above its Grad-CAM heatmap for its "
                "class: is the red on the object, or on the background?</p>"
                + _image(images["correct"], "correctly classified test images with heatmaps")
            )
        else:
            parts.append(
                "<p>No heatmaps: the backbone has no feature map for Grad-CAM, or the grid "
                "could not be drawn.</p>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_html(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def _safely(function, *args):
    """`function(*args)`, or None with a warning: a figure must never cost the trained run."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - reported, and the run directory is still written
        warnings.warn(f"Report: {function.__name__} failed ({error!r}); skipped.", stacklevel=3)
        return None


def write_report(tuner, directory) -> Path:
    """Write the report of a fitted `FineTuner` into `directory`; return `report.html`'s path.

    Args:
        tuner: a fitted `FineTuner` (its test images are predicted again for
            the mistakes grid).
        directory: the folder to create (`RUN_DIR/report` when called by `save_run`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plots = matplotlib_figure() is not None
    if not plots:
        warnings.warn(f"The run report has tables but no plots. {PLOTS_HINT}", stacklevel=2)
    metrics = tuner.metrics
    images = {"curves": _safely(plot_curves, tuner.history.rows)}
    if metrics is not None:
        matrix = metrics["confusion_matrix"]
        images["confusion_matrix"] = _safely(plot_confusion, matrix, tuner.class_names)
        grids = _safely(_test_grids, tuner)
        images.update(grids or {})
        with (directory / "per_class.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("class", "precision", "recall", "f1", "support"))
            for name, r in metrics["per_class"].items():  # a name is data, never a formula
                writer.writerow(
                    (csv_cell(name), r["precision"], r["recall"], r["f1"], r["support"])
                )
    for name, drawn in images.items():
        if drawn:
            (directory / f"{name}.png").write_bytes(drawn)
    title = f"keras_ft run: {tuner.model_config.backbone}, {len(tuner.class_names)} classes"
    if tuner.kept_model != "fine-tuned":  # the curves show phases whose model was not kept
        title += f"; the model is the {tuner.kept_model}"
    page = render_html(
        title,
        _summary_rows(tuner),
        tuner.history.rows,
        metrics,
        tuner.class_names,
        images,
        plots,
    )
    path = directory / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
