"""Rank backbones, or the layers of one backbone, by transferability before any training.

For each candidate the frozen features of the training and validation images
are computed once (pooled as the head would pool them), then scored with
LogME, the H-score and a linear probe (see `keras_ft.models.probe`). The table is
ranked by LogME; the result names a backbone, or, for layers, an `--unfreeze`
point:

    The unfreeze rule: take the earliest layer whose LogME is within `margin`
    (default 10%) of the range of scores below the best one, i.e.
    LogME >= best - margin * (best - worst). Its features already transfer as
    well as any later layer's, so the layers after it are the ones to adapt:
    unfreeze from the first layer with weights after it. When that layer is
    the last one, only the top layers need adapting: unfreeze from the
    backbone's usual fine-tuning point (`keras-ft backbones`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from keras_ft.data.folder import ImageFolder
from keras_ft.models.backbones import get_backbone
from keras_ft.models.classifier import Preprocess, pool_features
from keras_ft.models.probe import PROBE_VARIANCE_FLOOR, h_score, linear_probe, logme
from keras_ft.runs.output import check_destination
from keras_ft.runs.reproducibility import seed_everything
from keras_ft.training.features import extract_features
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.plots import matplotlib_figure, png
from keras_ft.utils.text import printable

MARGIN = 0.1


@dataclass
class RankResult:
    """What `rank` measured and recommends.

    Attributes:
        rows: one dict per candidate, best LogME first: `candidate`,
            `backbone`, `weights`, `layer`, `dimension`, `seconds`, `logme`,
            `h_score`, `probe_val_accuracy`, `probe_val_loss`, `probe_c`.
        mode: `"backbones"` or `"layers"`.
        recommendation: `{"backbone": ..., "weights": ..., "unfreeze": ...,
            "rule": ...}` (`unfreeze` only when ranking layers).
        feature_seconds: in layer mode, the one pass that computed every
            layer's features (each row's `seconds` is then its scoring time).
        files: the paths written (rank.json, rank.csv, rank.png).
    """

    rows: list[dict]
    mode: str
    recommendation: dict
    feature_seconds: float | None = None
    files: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The ranked table as text, with the recommendation under it."""
        header = ("candidate", "dim", "seconds", "LogME", "H-score", "probe val acc", "val loss")
        width = max(len(header[0]), *(len(r["candidate"]) for r in self.rows))
        lines = [f"{header[0]:<{width}}  " + "".join(f"{h:>14}" for h in header[1:])]
        for row in self.rows:
            accuracy, loss = row["probe_val_accuracy"], row["probe_val_loss"]
            cells = (
                str(row["dimension"]),
                f"{row['seconds']:.2f}",
                f"{row['logme']:.4f}",
                f"{row['h_score']:.3f}",
                "-" if accuracy is None else f"{accuracy:.4f}",
                "-" if loss is None else f"{loss:.4f}",
            )
            lines.append(f"{row['candidate']:<{width}}  " + "".join(f"{c:>14}" for c in cells))
        if self.feature_seconds is not None:
            lines.append(
                f"features of all {len(self.rows)} layers: {self.feature_seconds:.2f} s (one "
                "pass); seconds above: scoring only"
            )
        lines.append(self.recommendation["text"])
        return "\n".join(lines)


def parse_candidate(text: str, weights) -> tuple[str, str, str | None]:
    """`"vgg16"` or `"vgg16=WEIGHTS"` -> (label, registry name, weights); WEIGHTS may be none.

    The label is the name, with `:none` or `:FILE-STEM` when the weights were given for it.
    """
    name, _, own = str(text).partition("=")
    spec = get_backbone(name)
    if not own:
        return spec.name, spec.name, weights
    weights = None if own.lower() == "none" else own
    stem = "none" if weights is None else Path(weights).name.split(".")[0]
    return f"{spec.name}:{stem}", spec.name, weights


def stage_outputs(backbone: keras.Model) -> list[str]:
    """The `"auto"` layers: the last layer at each spatial resolution (each stage's output).

    For VGG16 at 64 px: block1_conv2, block2_conv2, block3_conv3,
    block4_conv3, block5_conv3 and block5_pool.
    """
    names, previous = [], None
    for layer in backbone.layers[1:]:
        shape = getattr(layer.output, "shape", None)
        if shape is None or len(shape) != 4:
            continue
        if previous is not None and tuple(shape[1:3]) != previous[1]:
            names.append(previous[0])
        previous = (layer.name, tuple(shape[1:3]))
    return [*names, backbone.layers[-1].name]


def _layers(backbone: keras.Model, layers) -> list[str]:
    """The layer names `layers` (`"auto"`, `"all"` or names) asks for, checked."""
    if layers in ("auto", ["auto"]):
        return stage_outputs(backbone)
    spatial = [
        layer.name for layer in backbone.layers[1:] if len(getattr(layer.output, "shape", ())) == 4
    ]
    if layers in ("all", ["all"]):
        return spatial
    unknown = [name for name in layers if name not in spatial]
    if unknown:
        raise KerasFTError(
            f"Invalid `layers`: {unknown} are not layers with a feature map in backbone "
            f"'{backbone.name}'. Pass auto, all, or names such as: "
            f"{', '.join(stage_outputs(backbone))}."
        )
    return list(layers)


def _extractor(backbone, preprocessing: str, names: list[str], image_size, pooling: str):
    """One model: raw pixels -> every named layer's pooled features, concatenated."""
    inputs = keras.Input((*image_size, 3), name="image")
    maps = keras.Model(backbone.input, [backbone.get_layer(n).output for n in names])(
        Preprocess(preprocessing, name="preprocess")(inputs), training=False
    )
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    pooled = [pool_features(m, pooling, prefix=f"f{i}_") for i, m in enumerate(maps)]
    outputs = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate()(pooled)
    return keras.Model(inputs, outputs), [int(p.shape[-1]) for p in pooled]


def _score(features, labels, val_features, val_labels, num_classes) -> dict:
    clock = time.perf_counter()
    probe = linear_probe(
        features, labels, val_features, val_labels, num_classes, PROBE_VARIANCE_FLOOR
    )
    return {
        "logme": logme(features, labels),
        "h_score": h_score(features, labels),
        "probe_val_accuracy": probe.validation_accuracy,
        "probe_val_loss": probe.validation_loss,
        "probe_c": probe.c,
        "seconds": time.perf_counter() - clock,
    }


def _split_features(extractor, data: ImageFolder):
    train, labels = extract_features(extractor, data.unaugmented_train())
    val, val_labels = (None, None)
    if data.validation is not None:
        val, val_labels = extract_features(extractor, data.validation)
    return train, labels, val, val_labels


def rank(
    data,
    backbones=("vgg16",),
    weights="imagenet",
    image_size=None,
    layers=None,
    pooling="avg",
    output=None,
    margin=MARGIN,
    validation_split=0.2,
    batch_size=32,
    seed=42,
    verbose=True,
) -> RankResult:
    """Score backbones (or one backbone's layers) on `data` from frozen features.

    Args:
        data: an `ImageFolder` (its training split is scored, its validation
            split scores the probe) or a folder path (read without
            augmentation, split by `validation_split` and `seed`).
        backbones: registry names, each optionally `NAME=WEIGHTS` (a weights
            path, or none) to override `weights` for it.
        weights: `"imagenet"`, `None` or a weights path, for every backbone.
        image_size: input size (default: the data's, else the first
            backbone's usual size).
        layers: `None` ranks the backbones; `"auto"` (each stage's output),
            `"all"` or a list of layer names ranks the layers of the one backbone.
        pooling: how the head pools feature maps: `"avg"`, `"max"`, `"avgmax"`,
            `"flatten"`.
        output: folder to write rank.json, rank.csv and rank.png into (None: nothing).
        margin: the unfreeze rule's margin, a fraction of the scores' range.
        validation_split, batch_size, seed: used when `data` is a path.
        verbose: print each candidate as it is scored.

    Returns:
        A `RankResult`.
    """
    candidates = _parse_candidates(backbones, weights, layers)
    directory = data.config.directory if isinstance(data, ImageFolder) else data
    if output is not None:
        check_destination(output, "--output", (directory,))
    if not isinstance(data, ImageFolder):
        size = image_size or get_backbone(candidates[0][1]).default_size
        data = ImageFolder(
            data,
            image_size=size,
            batch_size=batch_size,
            validation_split=validation_split,
            seed=seed,
            augment=False,
            quiet=not verbose,
        )
    rows, feature_seconds = [], None
    for candidate in candidates:
        scored, spent, backbone = _score_candidate(candidate, data, layers, pooling, seed, verbose)
        if layers is not None:
            feature_seconds = spent
        rows.extend(scored)
    recommendation = (
        _recommend_layer(rows, backbone, get_backbone(candidates[0][1]), margin)
        if layers is not None
        else _recommend_backbone(rows)
    )
    rows.sort(key=lambda r: -r["logme"])
    result = RankResult(rows, "backbones" if layers is None else "layers", recommendation)
    result.feature_seconds = feature_seconds
    if output is not None:
        result.files = write_rank(result, output)
    return result


def _parse_candidates(backbones, weights, layers) -> list[tuple[str, str, str | None]]:
    """`backbones` as `parse_candidate` tuples; layers are ranked for exactly one backbone."""
    candidates = [parse_candidate(text, weights) for text in backbones]
    if not candidates:
        raise KerasFTError("Invalid `backbones`: name at least one, e.g. ['vgg16', 'resnet50'].")
    if layers is not None and len(candidates) != 1:
        raise KerasFTError(
            f"Ranking layers needs exactly one backbone, received {len(candidates)}: "
            f"{[c[0] for c in candidates]}. Pass one --backbones value with --layers."
        )
    return candidates


def _score_candidate(
    candidate: tuple, data: ImageFolder, layers, pooling: str, seed: int, verbose
) -> tuple[list[dict], float, keras.Model]:
    """Score one backbone (its last layer, or each of `layers`) from one pass of features.

    Returns:
        `(rows, seconds, backbone)`: a row per scored layer, the seconds the features took,
        and the built backbone.
    """
    label, name, own_weights = candidate
    spec = get_backbone(name)
    seed_everything(seed, True)  # bitwise the same features every time
    clock = time.perf_counter()
    backbone = spec.build(data.image_size, own_weights)
    names = [backbone.layers[-1].name] if layers is None else _layers(backbone, layers)
    extractor, dims = _extractor(backbone, spec.preprocessing, names, data.image_size, pooling)
    train, labels, val, val_labels = _split_features(extractor, data)
    spent = time.perf_counter() - clock
    offsets = np.cumsum([0, *dims])
    rows = []
    for i, layer in enumerate(names):
        part = slice(offsets[i], offsets[i + 1])
        scores = _score(
            train[:, part],
            labels,
            None if val is None else val[:, part],
            val_labels,
            data.num_classes,
        )
        if layers is None:
            scores["seconds"] += spent
        row = {
            "candidate": label if layers is None else layer,
            "backbone": name,
            "weights": own_weights,
            "layer": layer,
            "dimension": dims[i],
            **scores,
        }
        rows.append(row)
        if verbose:
            print(
                printable(
                    f"{row['candidate']}: LogME {row['logme']:.4f}, H-score "
                    f"{row['h_score']:.3f}, probe {row['probe_val_accuracy']}"
                ),
                flush=True,
            )
    return rows, spent, backbone


def probe_order(row: dict) -> tuple[float, float]:
    """A sort key ranking a row's linear probe: validation accuracy, then at equal
    accuracy the lower validation loss (on a few validation images many probes reach 1.0)."""
    if row["probe_val_accuracy"] is None:
        return (-1.0, 0.0)
    return (row["probe_val_accuracy"], -row["probe_val_loss"])


def _recommend_backbone(rows: list[dict]) -> dict:
    best = max(rows, key=lambda r: r["logme"])
    text = f"recommended backbone: {best['candidate']} (highest LogME)"
    probe_best = max(rows, key=probe_order)
    if probe_best is not best and probe_best["probe_val_accuracy"] is not None:
        text += (
            f"; the linear probe prefers {probe_best['candidate']}: with few images per class "
            "fine-tune both, or trust the probe"
        )
    return {
        "backbone": best["backbone"],
        "weights": best["weights"],
        "candidate": best["candidate"],
        "rule": "the highest LogME",
        "text": text,
    }


def _recommend_layer(rows: list[dict], backbone: keras.Model, spec, margin: float) -> dict:
    """The unfreeze point from per-layer scores `rows` (in backbone order): see the module doc."""
    scores = np.array([r["logme"] for r in rows])
    threshold = scores.max() - margin * (scores.max() - scores.min())
    chosen = rows[int(np.argmax(scores >= threshold))]
    names = [layer.name for layer in backbone.layers]
    after = [
        layer.name for layer in backbone.layers[names.index(chosen["layer"]) + 1 :] if layer.weights
    ]
    last = chosen is rows[-1] or not after
    unfreeze = (spec.finetune_from or "all") if last else after[0]
    rule = (
        f"the earliest layer with LogME >= best - {margin:g} x (best - worst) is "
        f"{chosen['layer']}; unfreeze from the first layer with weights after it"
        + (" (it is the last layer: the backbone's usual point instead)" if last else "")
    )
    return {
        "backbone": rows[0]["backbone"],
        "weights": rows[0]["weights"],
        "layer": chosen["layer"],
        "unfreeze": unfreeze,
        "margin": margin,
        "rule": rule,
        "text": f"recommended: --unfreeze {unfreeze} ({rule})",
    }


def write_rank(result: RankResult, output) -> list[str]:
    """Write rank.json, rank.csv and (with matplotlib) rank.png into `output`."""
    folder = Path(output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "rank.json", folder / "rank.csv"]
        record = {
            "mode": result.mode,
            "rows": result.rows,
            "recommendation": result.recommendation,
            "feature_seconds": result.feature_seconds,
        }
        paths[0].write_text(json.dumps(record, indent=2) + "\n")
        with open(paths[1], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(result.rows[0]))
            writer.writeheader()
            writer.writerows(result.rows)
        png = plot_rank(result.rows)
        if png is not None:
            paths.append(folder / "rank.png")
            paths[-1].write_bytes(png)
    except OSError as error:
        raise KerasFTError(
            f"Cannot write the ranking into '{output}': {error.strerror or error}. "
            "Choose another --output."
        ) from None
    return [os.fspath(p) for p in paths]


def plot_rank(rows: list[dict]) -> bytes | None:
    """Horizontal bars of LogME per candidate, best on top (None without matplotlib)."""
    figure_class = matplotlib_figure()
    if figure_class is None:
        return None
    figure = figure_class(figsize=(7, 0.45 * len(rows) + 1.2))
    axes = figure.add_subplot()
    labels = [r["candidate"] for r in rows][::-1]
    axes.barh(labels, [r["logme"] for r in rows][::-1], color="#4c72b0")
    axes.set_xlabel("LogME (higher transfers better)")
    figure.tight_layout()
    return png(figure)
