"""The `explain` command: where the model looked, as one PNG per image (Grad-CAM,
`keras_ft.models.gradcam`).

`explain(run_dir, images, output)` (and `keras-ft explain RUN IMAGE...
--output DIR`) writes one PNG per image: the image, the heatmap over it and
the top-3 labels with their probabilities. It needs matplotlib
(`pip install "keras-ft[plots]"`).

"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_ft.models.gradcam import GradCAM
from keras_ft.runs.output import check_destination, write_failed
from keras_ft.utils.errors import KerasFTError

PLOTS_EXTRA = 'pip install "keras-ft[plots]"'


def figure_png(image: np.ndarray, heatmap: np.ndarray, top: list[tuple[str, float]]) -> bytes:
    """A PNG: the image, the heatmap over it, the top labels with their probabilities."""
    from keras_ft.utils.plots import matplotlib_figure, png

    figure_class = matplotlib_figure()
    if figure_class is None:
        raise KerasFTError(f"Drawing Grad-CAM figures needs matplotlib: {PLOTS_EXTRA}.")
    figure = figure_class(figsize=(6.4, 3.6))
    left, right = figure.subplots(1, 2)
    for axis in (left, right):
        axis.imshow(image)
        axis.set_axis_off()
    right.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    left.set_title("image", fontsize=9)
    right.set_title("Grad-CAM", fontsize=9)
    from keras_ft.utils.text import printable

    figure.suptitle(  # class names are data: "$x$" is drawn as it is, not parsed as mathtext
        "   ".join(f"{printable(name)}: {probability:.3f}" for name, probability in top),
        fontsize=9,
        parse_math=False,
    )
    return png(figure)


def _png_names(paths) -> list[str]:
    """`<stem>.png` for each image, numbered where two images share a stem."""
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def explain(run_dir, images, output, top_k: int = 3, signing_key=None) -> list[Path]:
    """Write one Grad-CAM figure per image file into `output`.

    Args:
        run_dir: a run directory, verified as `keras_ft.load` does.
        images: image file paths.
        output: the folder to write `<image stem>.png` into (created if needed;
            an existing file of the same name is refused, not overwritten).
        top_k: how many labels to show.
        signing_key: as for `keras_ft.load`.

    Returns:
        The PNG paths written, in the order of `images`.
    """
    from keras_ft.runs.loading import load
    from keras_ft.utils.plots import matplotlib_figure

    if matplotlib_figure() is None:
        raise KerasFTError(f"Drawing Grad-CAM figures needs matplotlib: {PLOTS_EXTRA}.")
    check_destination(output, "--output", run_dirs=(run_dir,))
    predictor = load(run_dir, signing_key=signing_key)
    explainer = GradCAM(predictor.model)
    output = Path(output)
    targets = [output / name for name in _png_names(images)]
    taken = [str(path) for path in targets if path.exists()]
    if taken:
        raise KerasFTError(
            f"'{taken[0]}' already exists. Choose another --output folder, or remove the file."
        )
    pixels = predictor.read_batch([os.fspath(path) for path in images])  # names bad files
    try:
        output.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(pixels), 16):
            batch = pixels[start : start + 16]
            heatmaps, probabilities = explainer(batch)
            for image, heatmap, row, target in zip(
                batch, heatmaps, probabilities, targets[start : start + 16], strict=True
            ):
                order = np.argsort(-row, kind="stable")[:top_k]
                top = [(predictor.class_names[i], float(row[i])) for i in order]
                target.write_bytes(figure_png(image.astype(np.uint8), heatmap, top))
    except OSError as error:  # a full or read-only disk
        raise write_failed(output, "--output", error) from None
    return targets
