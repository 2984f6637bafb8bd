"""How each phase compiles: the optimizers (Adam for the head, SGD momentum for
fine-tuning, per-layer rates and starts), the loss and the class weights."""

from __future__ import annotations

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from keras_ft.config import TrainingConfig
from keras_ft.models.classifier import backbone_of
from keras_ft.utils.errors import KerasFTError

TOP_K = 5  # the training log's top-k accuracy, shown only with more than TOP_K classes


@keras.saving.register_keras_serializable(package="keras_ft")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing.

    Keras's `SparseCategoricalCrossentropy` has no `label_smoothing`; this is
    `CategoricalCrossentropy(label_smoothing=...)` on one-hot labels.
    """

    def __init__(self, label_smoothing: float = 0.0, name="sparse_smoothed_crossentropy", **kw):
        super().__init__(name=name, **kw)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        one_hot = keras.ops.one_hot(keras.ops.reshape(y_true, (-1,)), keras.ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="keras_ft")
class LayerwiseSGD(keras.optimizers.SGD):
    """SGD (with momentum) whose learning rate is multiplied per variable, and
    whose variables may start training late.

    Keras's SGD update is linear in `learning_rate * gradient`, so this is
    what scaling each variable's gradient would do, and exactly per-variable
    learning rates: a variable with multiplier s trains as plain SGD at
    `s * learning_rate` would (up to float rounding of the product). A variable
    with a start step takes no step before the optimizer's iteration reaches it
    (counted from 0): its momentum stays 0 and its weights are kept bitwise,
    as if frozen (gradual unfreezing). Decoupled weight decay, as Keras's SGD
    applies it, is applied here per variable: from its start step, at the
    variable's scaled rate, so that weight decay included a variable trains
    as plain SGD at its own rate would.

    Args:
        multipliers: `{variable path: multiplier}`; unnamed variables keep 1.
        starts: `{variable path: first step}`; unnamed variables start at 0.
        **kwargs: `keras.optimizers.SGD` arguments.
    """

    def __init__(self, multipliers=None, starts=None, **kwargs):
        super().__init__(**kwargs)
        self.multipliers = dict(multipliers or {})
        self.starts = dict(starts or {})

    def build(self, variables):
        # The backend hands `update_step` raw variables without paths: key by index.
        self._scales = [self.multipliers.get(v.path, 1.0) for v in variables]
        self._starts = [self.starts.get(v.path, 0) for v in variables]
        super().build(variables)

    def _apply_weight_decay(self, variables):
        pass  # in `update_step`, where each variable's start is known

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if self._starts[index]:
            started = keras.ops.greater_equal(self.iterations, self._starts[index])
            learning_rate = keras.ops.where(started, learning_rate, 0.0)
        if self._scales[index] != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, self._scales[index])
        if self.weight_decay is not None and self._use_weight_decay(variable):
            rate = keras.ops.cast(learning_rate, variable.dtype)
            decay = keras.ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, variable * decay * rate)  # as Keras's SGD at that rate
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "multipliers": self.multipliers, "starts": self.starts}


def trainable_backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers that phase 2 trains (those with trainable weights), in depth
    order."""
    return [layer for layer in backbone_of(model).layers if layer.trainable_weights]


def layer_multipliers(model: keras.Model, ratio: float) -> dict[str, float]:
    """Discriminative learning rates: lower multipliers for lower trainable backbone layers.

    The backbone's trainable layers, in depth order, get multipliers spaced
    geometrically from `1 / ratio` (the lowest) to 1 (the top one); the
    head's layers keep 1 (fastai's `slice(lr / ratio, lr)`, one step per layer).

    Returns:
        `{variable path: multiplier}` for the backbone's trainable variables.
    """
    layers = trainable_backbone_layers(model)
    multipliers = {}
    for i, layer in enumerate(layers):
        depth = i / (len(layers) - 1) if len(layers) > 1 else 1.0
        for variable in layer.trainable_weights:
            multipliers[variable.path] = float(ratio ** (depth - 1.0))
    return multipliers


def unfreeze_groups(model: keras.Model, groups: int) -> list[list[keras.layers.Layer]]:
    """Gradual unfreezing's groups: the backbone's trainable layers, top first, in
    `groups` runs of consecutive layers of about equal size (the larger runs at
    the top; at most one group per layer, and 0 is one group).

    For VGG16 unfrozen from block 1, 5 groups are its 5 blocks.
    """
    layers = trainable_backbone_layers(model)[::-1]
    if not layers:
        return []
    parts = np.array_split(np.arange(len(layers)), min(max(groups, 1), len(layers)))
    return [[layers[i] for i in part] for part in parts]


def layer_starts(model: keras.Model, groups: int, steps_per_epoch: int) -> dict[str, int]:
    """`LayerwiseSGD`'s starts for gradual unfreezing: group g of `unfreeze_groups`
    (0 at the top) starts at step `g * steps_per_epoch`, the first step of phase 2's
    epoch g + 1.

    Returns:
        `{variable path: first step}` for the variables that start after step 0.
    """
    return {
        variable.path: g * steps_per_epoch
        for g, group in enumerate(unfreeze_groups(model, groups))
        for layer in group
        for variable in layer.trainable_weights
        if g
    }


def finetune_learning_rate(config: TrainingConfig, steps_per_epoch: int):
    """Phase 2's learning rate: constant, or linear warm-up then cosine decay to 0."""
    if config.finetune_schedule == "constant":
        return config.finetune_lr
    warmup = config.warmup_epochs * steps_per_epoch
    decay = max(1, (config.finetune_epochs - config.warmup_epochs) * steps_per_epoch)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(config.finetune_lr, decay)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay, warmup_target=config.finetune_lr, warmup_steps=warmup
    )


def class_weights(config: TrainingConfig, data) -> dict[int, float] | None:
    """`config.class_weight` as Keras wants it: {class index: weight}.

    `"balanced"` weighs each class by n_samples / (n_classes * its count),
    scikit-learn's rule; a dict names classes, and unnamed ones weigh 1.
    """
    if config.class_weight is None:
        return None
    labels = np.array([f.label for f in data.train_files])
    if config.class_weight == "balanced":
        weights = compute_class_weight("balanced", classes=np.arange(data.num_classes), y=labels)
        return {i: float(w) for i, w in enumerate(weights)}
    unknown = sorted(set(config.class_weight) - set(data.class_names))
    if unknown:
        raise KerasFTError(
            f"Invalid `class_weight`: unknown class(es) {unknown}. "
            f"The classes are: {list(data.class_names)}."
        )
    return {i: float(config.class_weight.get(name, 1.0)) for i, name in enumerate(data.class_names)}


def gradual_plan(groups: list[list[keras.layers.Layer]]) -> str:
    """What gradual unfreezing trains at each epoch of phase 2, in one line."""
    if not groups:
        return "gradual unfreezing: no backbone layer trains in phase 2."
    names = [g[0].name if len(g) == 1 else f"{g[-1].name}-{g[0].name}" for g in groups]
    later = "".join(f"; epoch {i} adds {name}" for i, name in enumerate(names[1:], 2))
    return f"gradual unfreezing: phase 2's epoch 1 trains the head and {names[0]}{later}."


def compile_for_phase(
    model: keras.Model,
    phase: str,
    config: TrainingConfig,
    num_classes: int,
    steps_per_epoch: int = 1,
    learning_rate: float | None = None,
) -> None:
    """Compile `model` for `phase`: Adam at `head_lr`, or SGD momentum for fine-tuning.

    With `config.discriminative_lr` > 1 or `config.gradual_unfreeze` > 1,
    fine-tuning uses `LayerwiseSGD`: with `layer_multipliers` (lower backbone
    layers train at lower rates) and `layer_starts` (lower groups join later).
    `learning_rate` replaces the configured rate and schedule (the range test's
    sweep, in which every unfrozen layer trains from the first step). The metrics
    are accuracy and, with more than `TOP_K` classes, top-`TOP_K` accuracy.
    """
    if phase == "head":
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate or config.head_lr)
    else:
        rate = learning_rate or finetune_learning_rate(config, steps_per_epoch)
        sgd = dict(
            learning_rate=rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay or None,  # None: Keras skips the decay step
        )
        ratio, groups = config.discriminative_lr, config.gradual_unfreeze
        multipliers = layer_multipliers(model, ratio) if ratio > 1.0 else {}
        gradual = groups > 1 and not learning_rate
        starts = layer_starts(model, groups, steps_per_epoch) if gradual else {}
        if multipliers or starts:
            optimizer = LayerwiseSGD(multipliers, starts, **sgd)
        else:
            optimizer = keras.optimizers.SGD(**sgd)
    if config.label_smoothing:
        loss = SparseSmoothedCrossentropy(config.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if num_classes > TOP_K:  # with TOP_K classes or fewer it is always 1
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=TOP_K, name="top_k_accuracy"))
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        jit_compile=config.jit_compile,  # refused with determinism (see TrainingConfig)
    )
