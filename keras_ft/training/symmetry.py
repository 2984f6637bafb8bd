"""Whether training should flip or turn images, decided from the data by linear probes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_ft.models.probe import ProbeResult, linear_probe
from keras_ft.training.features import extract_features

FLIP_RETAINED = 0.6  # for flip="auto": the share of the probe's accuracy mirrors must keep
TURNS_RETAINED = 0.5  # for quarter_turns="auto": the share turned images must keep
GRID_RETAINED = 0.3  # for both: the share the shallow grid's probe must keep (`_decide_symmetry`)


@dataclass(frozen=True)
class GridProbe:
    """The second probe of `decide_flip` and `decide_quarter_turns`: a shallow feature map
    averaged over a 2x2 grid (`extractor`) and the linear probe fitted on its features of
    the training images (`probe`). Made once by `grid_probe`, for both decisions."""

    extractor: keras.Model
    probe: ProbeResult


def grid_probe(extractor: keras.Model, data) -> GridProbe | None:
    """The `GridProbe` of `extractor` (the frozen backbone and its pooling) on `data`'s
    training images, or None where the backbone has no such map (see `_grid_extractor`)."""
    grid = _grid_extractor(extractor)
    if grid is None:
        return None
    train, labels = extract_features(grid, data.unaugmented_train())
    return GridProbe(grid, linear_probe(train, labels, num_classes=data.num_classes))


def decide_flip(extractor: keras.Model, data, probe, grid: GridProbe | None = None) -> dict:
    """Whether training should flip images, from how linear probes see mirrored ones.

    Taken before phase 1, so that both phases follow it. The linear probe,
    fitted on the frozen features of the training images, is shown the same
    images mirrored. Where left and right carry no meaning (photos, textures)
    a mirror image is just another image of its class, and the probe keeps
    most of its accuracy; mirrored digits and text are other symbols, and it
    loses most of it. The share kept is `(mirrored - chance) / (accuracy -
    chance)`; the rule (`_decide_symmetry`): flip when the probe keeps at
    least `FLIP_RETAINED`, a second probe on a shallower feature map at least
    `GRID_RETAINED`, and both close at least a quarter of the gap from chance
    to 1. Otherwise do not flip: a wrong flip is the silent mistake. The
    training split, not the validation split, is measured: it is the larger,
    and it exists without a validation split. It costs two more passes of the
    frozen backbone over the training images.

    Args:
        extractor: the frozen backbone and its pooling (`split_at_features`).
        data: the `ImageFolder` (its training split is measured).
        probe: the `keras_ft.models.probe.ProbeResult` fitted on the training
            split's frozen features.
        grid: the second probe (`grid_probe`), which both decisions of a fit
            share; None: made here.

    Returns:
        A dict: `flip` (bool), `accuracy` and `mirrored_accuracy` (the
        probe's on the training images and on their mirror images),
        `retained` (its share), `retained_grid` (the second probe's, where
        there is one) and `reason` (one sentence, for the user).
    """
    words = ("flip", "mirrored", "mirror images", "horizontal flips", FLIP_RETAINED)
    return _decide_symmetry(extractor, data, probe, grid, words, tf.image.flip_left_right)


def decide_quarter_turns(
    extractor: keras.Model, data, probe, grid: GridProbe | None = None
) -> dict:
    """Whether training should turn images by quarter turns, as `decide_flip` decides flips.

    The probes are shown the training images turned a quarter (90 degrees):
    the classes of textures, micrographs, aerial and microscope images keep
    under a turn, those of digits, text and upright photos do not. The rule
    is `decide_flip`'s, with `TURNS_RETAINED` for the pooled probe; images
    that are not square are never turned (a turn would swap their height and
    width).

    Returns:
        A dict: `quarter_turns` (bool), `accuracy` and `turned_accuracy`,
        `retained`, `retained_grid` and `reason`, as `decide_flip`'s.
    """
    height, width = data.image_size
    if height != width:
        return {
            "quarter_turns": False,
            "reason": f"no quarter turns: the images ({height}x{width}) are not square.",
        }
    words = ("quarter_turns", "turned", "copies turned a quarter", "quarter turns", TURNS_RETAINED)
    return _decide_symmetry(extractor, data, probe, grid, words, tf.image.rot90)


def _decide_symmetry(extractor, data, probe, grid, words: tuple, transform) -> dict:
    """`decide_flip`'s rule for `transform` (a function of a batch of images).

    Two probes are shown the transformed training images: `probe`, on the
    pooled features, and `grid` (made here if None, see `grid_probe`), on a
    shallower feature map (the backbone's last at a stride of at most 8, whose
    units see a small part of the image) averaged over a 2x2 grid, which keeps
    left from right and top from bottom. Deep features that barely change under the transform
    (ImageNet-trained ones are close to mirror-invariant) cannot tell digits
    from their mirror images; the shallow grid's probe sees where the
    evidence lies and which way it faces. The pooled probe must keep the
    `words` share, the grid's `GRID_RETAINED`. Without such a map (a backbone
    that is not a model of layers, images too small) the pooled probe decides
    alone.

    `words`: the decision's key, the transformed accuracy's key prefix, what
    the transformed images are called, what the augmentation is called, and
    the share of the pooled probe's accuracy above chance they must keep.
    """
    key, prefix, images, augmentation, threshold = words
    chance = 1.0 / data.num_classes
    transformed = data.unaugmented_train().map(lambda x, labels: (transform(x), labels))
    features, labels = extract_features(extractor, transformed)
    accuracy = probe.train_accuracy
    retained, transformed_accuracy = _share(accuracy, probe.predict(features), labels, chance)
    measured = (
        f"the linear probe's accuracy on the training images is {accuracy:.3f}, on their "
        f"{images} {transformed_accuracy:.3f}"
    )
    shares = [(retained, threshold, "keeping {:.0%} of its accuracy above chance")]
    grid = grid or grid_probe(extractor, data)
    if grid is not None:
        grid_transformed = grid.probe.predict(extract_features(grid.extractor, transformed)[0])
        grid_retained, grid_accuracy = _share(
            grid.probe.train_accuracy, grid_transformed, labels, chance
        )
        shares.append((grid_retained, GRID_RETAINED, "a probe on a shallower map's grid {:.0%}"))
        measured += (
            f" (on a 2x2 grid of a shallower feature map {grid.probe.train_accuracy:.3f} "
            f"and {grid_accuracy:.3f})"
        )
    informative = all(share is not None for share, _, _ in shares)
    chosen = informative and all(share >= least for share, least, _ in shares)
    if not informative:
        reason = f"no {augmentation}: {measured}, too close to chance to tell."
    else:
        kept = ", ".join(
            f"{text.format(share)} ({'>=' if share >= least else '<'} {least:.0%})"
            for share, least, text in shares
        )
        reason = f"{augmentation if chosen else f'no {augmentation}'}: {measured}, {kept}."
    decision = {
        key: bool(chosen),
        "accuracy": float(accuracy),
        f"{prefix}_accuracy": transformed_accuracy,
        "retained": float(retained) if retained is not None else 0.0,
        "reason": reason,
    }
    if grid is not None:
        decision["retained_grid"] = shares[1][0]
    return decision


def _share(accuracy: float, predicted, labels, chance: float) -> tuple[float | None, float]:
    """(share of `accuracy` above chance kept by `predicted`, or None if `accuracy` is too
    close to chance to tell; the accuracy of `predicted`)."""
    transformed = float(np.mean(predicted == labels))
    if accuracy < chance + (1.0 - chance) / 4:
        return None, transformed
    return float((transformed - chance) / (accuracy - chance)), transformed


def _grid_extractor(extractor: keras.Model) -> keras.Model | None:
    """The backbone's last feature map at a stride of at most 8, averaged over a 2x2 grid
    and flattened (None for an extractor with no backbone model inside, or no such map)."""
    nested = [i for i, layer in enumerate(extractor.layers) if isinstance(layer, keras.Model)]
    if not nested:
        return None
    backbone = extractor.layers[nested[0]]
    height, width = extractor.input.shape[1:3]
    shallow = [
        layer
        for layer in backbone.layers
        if not isinstance(layer, keras.layers.InputLayer)
        and len(layer.output.shape) == 4
        and layer.output.shape[1] >= max(2, math.ceil(height / 8))
        and layer.output.shape[2] >= max(2, math.ceil(width / 8))
    ]
    if not shallow:
        return None
    middle = keras.Model(backbone.input, shallow[-1].output)
    before = extractor.layers[nested[0] - 1]
    feature_map = middle(extractor.input if nested[0] == 1 else before.output)
    size = (math.ceil(feature_map.shape[1] / 2), math.ceil(feature_map.shape[2] / 2))
    cells = keras.layers.AveragePooling2D(size, padding="same", name="symmetry_grid")
    return keras.Model(extractor.input, keras.layers.Flatten()(cells(feature_map)))


DECIDERS = {"flip": decide_flip, "quarter_turns": decide_quarter_turns}
