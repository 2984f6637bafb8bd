"""Hyperparameter search with KerasTuner: every trial is a whole two-phase fine-tune.

`tune` searches the phase 1 and phase 2 learning rates, the unfreeze point,
the dropout, the head width and the augmentation strength. Each trial builds
its own `ImageFolder` and `FineTuner` from the trial's settings, runs the full
two-phase `fit`, and is scored by its accuracy on the validation split. The
output directory holds:

    trials.csv, trials.json   one row per trial: settings, val_accuracy, val_loss, status
    search.json               the search space, the fixed settings and the best trial
    best/                     the best trial's model, as an ordinary run directory

KerasTuner (`pip install "keras-ft[tune]"`) proposes the settings: its random,
Bayesian and grid oracles, seeded. Every trial trains with the same seed, so
scores differ only by the settings, and the same seed on the same hardware
gives the same trials and scores.

The search space (what is searched, and its KerasTuner form) is
`keras_ft.tools.search_space`; the trials, and trials.csv and trials.json, are
`keras_ft.tools.trials`. This module checks the arguments, then runs the search
and writes search.json and best/.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from keras_ft.config import (
    ModelConfig,
    TrainingConfig,
    check,
    is_count,
    is_int,
    options_of,
    to_dict,
)
from keras_ft.data.folder import ImageFolder
from keras_ft.models.backbones import BackboneSpec, get_backbone
from keras_ft.runs.output import check_output
from keras_ft.task.finetuner import FineTuner
from keras_ft.tools.search_space import (
    OBJECTIVE,
    SETTINGS,
    Dimension,
    check_search,
    import_keras_tuner,
    initial_points,
)
from keras_ft.tools.trials import TrialRunner, data_options, run_search
from keras_ft.utils.errors import KerasFTError

# FineTuner and fit arguments that tune sets itself (searched, or decided per trial).
_OWN_ARGUMENTS = (
    *SETTINGS,
    *("self", "data", "backbone", "num_classes", "seed", "preprocessing", "verbose", "evaluate"),
)
_REFUSED_FIT_ARGUMENTS = ("checkpoint_dir", "resume")


@dataclass
class SearchResult:
    """What `tune` found.

    Attributes:
        trials: one dict per trial, as in `trials.json`.
        best_trial: the best trial's row (highest val_accuracy, then lowest
            val_loss, then the earliest).
        best_run_dir: the best model's run directory (`output/best`).
        best: the best trial's fitted `FineTuner`.
        output: the search's output directory.
    """

    trials: list[dict]
    best_trial: dict
    best_run_dir: str
    best: FineTuner
    output: str


def _split_options(options: dict) -> tuple[dict, dict, dict]:
    """Check the arguments `tune` passes to every trial; split them by where they go.

    Returns:
        `(model, training, fit)`: `ModelConfig` fields, `TrainingConfig` fields,
        and the other `FineTuner.fit` arguments (`recipe`, `callbacks`, ...).
    """
    accepted = {
        *inspect.signature(FineTuner).parameters,
        *inspect.signature(FineTuner.fit).parameters,
    } - set(_OWN_ARGUMENTS)
    for name in options:
        if name in _REFUSED_FIT_ARGUMENTS:
            raise KerasFTError(
                f"`tune` does not take `{name}`: trials are not checkpointed. "
                "Run `keras-ft train` with the best settings to train with checkpoints."
            )
        if name not in accepted:
            allowed = sorted(accepted - set(_REFUSED_FIT_ARGUMENTS))
            raise KerasFTError(
                f"`tune` received an unknown argument `{name}`. It passes these on to "
                f"FineTuner and FineTuner.fit: {', '.join(allowed)}."
            )
    model, training = options_of(ModelConfig), options_of(TrainingConfig)
    return (
        {k: v for k, v in options.items() if k in model},
        {k: v for k, v in options.items() if k in training},
        {k: v for k, v in options.items() if k not in model and k not in training},
    )


def _check_layer_names(space: dict[str, Dimension], spec, image_size) -> None:
    """Refuse, before any trial, an unfreeze choice naming no layer of the backbone."""
    names = [
        v
        for v in space["unfreeze"].values
        if isinstance(v, str) and v not in ("all", spec.finetune_from) and not is_count(v)
    ]
    if not names:
        return
    layers = [layer.name for layer in spec.build(image_size, None).layers]
    unknown = [name for name in names if name not in layers]
    if unknown:
        raise KerasFTError(
            f"Invalid `unfreeze`: no layer named {', '.join(map(repr, unknown))} in backbone "
            f"'{spec.name}'. Pass 'all', a number of top layers, or layer names such as "
            f"{', '.join(layers[-40::4])} (`keras-ft backbones` suggests one per backbone)."
        )


def _check_strength(data: ImageFolder, dimension: Dimension) -> None:
    """Refuse a strength that scales rotation, zoom or contrast past what augmentation allows."""
    from keras_ft.config import DataConfig

    options = data_options(data, max(dimension.values))
    try:
        DataConfig(**{k: v for k, v in options.items() if k in DataConfig.__dataclass_fields__})
    except KerasFTError as error:
        raise KerasFTError(
            f"Invalid `augment_strength`: {max(dimension.values)!r} scales rotation "
            f"{data.config.rotation}, zoom {data.config.zoom} and contrast "
            f"{data.config.contrast} too far ({error}) Lower the strength's maximum."
        ) from None


def _prepare_output(output, overwrite: bool, data: ImageFolder) -> Path:
    """Make the search folder, once the data and every option have been checked.

    A folder keras_ft did not write, or one that overlaps the data, is refused
    (see `keras_ft.runs.output.check_output`); with `overwrite` an earlier search or
    run there is replaced.
    """
    path, state = check_output(output, (data.config.directory, data.config.test_dir), overwrite)
    if state == "replace":
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def tune(
    data,
    output,
    trials=10,
    search="random",
    seed=42,
    head_lr=(1e-4, 1e-2),
    finetune_lr=(1e-5, 1e-3),
    unfreeze=None,
    dropout=(0.0, 0.5),
    dense_units=(0, 128, 256),
    augment_strength=None,
    grid_points=3,
    backbone="vgg16",
    overwrite=False,
    verbose="auto",
    **options,
) -> SearchResult:
    """Search fine-tuning settings with KerasTuner; save the best model as a run directory.

    Each trial is a whole two-phase `FineTuner.fit` with the trial's settings and the same `seed`,
    scored by accuracy on the validation split. Every searched argument takes a range (or
    choices) to search, or one value to keep fixed.

    Args:
        data: an `ImageFolder` with `validation_split > 0`, or a folder path (read with the
            backbone's input size, `validation_split=0.2` and `seed`).
        output: directory to write: `trials.csv`, `trials.json`, `search.json` and `best/`, the
            best trial's run directory (`keras_ft.load` and `keras-ft predict` read it).
            KerasTuner's own files go to a temporary folder, removed at the end.
        trials: how many settings to try (a grid search stops early when its grid is exhausted).
        search: `"random"`, `"bayesian"` (Gaussian-process Bayesian optimisation; the first third
            of the trials, at least 3, are random) or `"grid"` (ordered combinations, the last
            setting changing fastest).
        seed: seeds KerasTuner's proposals and every trial's training.
        head_lr: phase 1 learning rate: a `(low, high)` range searched on a log scale, or one value.
        finetune_lr: phase 2 learning rate: a range (log scale) or one value.
        unfreeze: choices of where phase 2 unfreezes from (`"all"`, a backbone layer name, or a
            number of top layers), or one of them. `None`: the backbone's suggested layer
            (`keras-ft backbones`) and `"all"`.
        dropout: dropout before the classifier: a range in [0, 1) or one value.
        dense_units: choices of the head's hidden layer width (0: no hidden layer), or one width.
        augment_strength: a factor on the data's rotation, zoom and contrast (0: flips only): a
            range or one value. `None`: `(0.0, 2.0)`, or 0 when the data is not augmented.
        grid_points: values per range in a grid search (log-spaced for learning rates).
        backbone: a registry name (`keras-ft backbones`, or one added with
            `keras_ft.register_backbone`); each trial builds it afresh.
        overwrite: replace an existing `output`.
        verbose: 0 for silence; otherwise KerasTuner's trial summaries and Keras progress.
        **options: the same for every trial: any other `FineTuner` argument (`weights`,
            `pooling`, `deterministic`: the same seed then gives the same trials and scores, ...)
            and any `FineTuner.fit` argument (`head_epochs`, `finetune_epochs`, `momentum`,
            `callbacks`, ...). Each trial's `FineTuner` is `FineTuner.from_configs` of these
            configs with the trial's settings replaced.

    Returns:
        A `SearchResult`: the trial rows, the best row, the best run directory and the best
        fitted `FineTuner`.

    Example:

    >>> data = keras_ft.ImageFolder("flowers/train", test_dir="flowers/test", image_size=224)
    >>> result = keras_ft.tune(data, "runs/flowers-search", trials=20, search="bayesian",
    ...                        backbone="mobilenetv3small", head_lr=(1e-4, 1e-2))
    >>> result.best_trial["val_accuracy"], result.best_run_dir
    """
    how = (search, trials, seed, grid_points)
    searched = (head_lr, finetune_lr, unfreeze, dropout, dense_units, augment_strength)
    checked = _check_arguments(backbone, how, searched, options)
    check_output(output, (), overwrite)
    data = _search_data(data, checked.spec, seed, verbose)
    _fit_space(checked.space, checked.spec, data, augment_strength)
    model = _model_config(data, checked, seed)
    output = _prepare_output(output, overwrite, data)
    runner = TrialRunner(data, model, checked.training, checked.fit_arguments, verbose, output)
    run_search(checked.keras_tuner, runner, checked.space, how, verbose, output)
    result = SearchResult(*runner.finish(), runner.best.tuner, str(output))
    _write_summary(output, result, how, checked, runner)
    return result


@dataclass
class _Checked:
    """`tune`'s arguments, checked before any image is read, and KerasTuner, imported."""

    spec: BackboneSpec
    space: dict[str, Dimension]
    model_options: dict
    training: TrainingConfig
    fit_arguments: dict
    keras_tuner: object


def _check_arguments(backbone, how: tuple, searched: tuple, options: dict) -> _Checked:
    """Check `tune`'s arguments (none reads an image), then import KerasTuner.

    Args:
        how: `(search, trials, seed, grid_points)`, as given to `tune`.
        searched: `(head_lr, finetune_lr, unfreeze, dropout, dense_units, augment_strength)`,
            as given to `tune`.
    """
    search, trials, seed, grid_points = how
    head_lr, finetune_lr, unfreeze, dropout, dense_units, augment_strength = searched
    spec = _registered(backbone)
    space = check_search(
        trials,
        search,
        grid_points,
        head_lr,
        finetune_lr,
        _suggested_unfreeze(spec) if unfreeze is None else unfreeze,
        dropout,
        dense_units,
        (0.0, 2.0) if augment_strength is None else augment_strength,
    )
    check(is_int(seed), "seed", "an int", seed)
    model_options, training_options, fit_arguments = _split_options(options)
    training = TrainingConfig(**training_options)  # checked before any image is read
    keras_tuner = import_keras_tuner()
    return _Checked(spec, space, model_options, training, fit_arguments, keras_tuner)


def _registered(backbone) -> BackboneSpec:
    """The registry spec every trial builds afresh; a `keras.Model` is refused."""
    if not isinstance(backbone, str):
        raise KerasFTError(
            f"`tune` needs a registry backbone name (`keras-ft backbones`), received "
            f"{type(backbone).__name__}: every trial must start from the same fresh weights. "
            "Register a backbone of your own with keras_ft.register_backbone(BackboneSpec("
            "name, builder, preprocessing)) and pass its name."
        )
    return get_backbone(backbone)


def _suggested_unfreeze(spec: BackboneSpec) -> tuple:
    """`unfreeze`'s default choices: the backbone's suggested layer, and `"all"`."""
    return tuple(dict.fromkeys(v for v in (spec.finetune_from, "all") if v))


def _search_data(data, spec: BackboneSpec, seed: int, verbose) -> ImageFolder:
    """`data` as an `ImageFolder` with a validation split; a path is read at the default size."""
    if not isinstance(data, ImageFolder):
        if not isinstance(data, (str, os.PathLike)):
            raise KerasFTError(
                f"`tune` expects an ImageFolder or a folder path, received {type(data).__name__}."
            )
        data = ImageFolder(data, image_size=spec.default_size, seed=seed, quiet=verbose == 0)
    if not data.config.validation_split > 0:
        raise KerasFTError(
            "Invalid `validation_split`: tune scores each trial by validation accuracy, so the "
            f"data needs a validation split, received {data.config.validation_split!r}. Pass "
            "ImageFolder(..., validation_split=0.2) (--validation-split 0.2)."
        )
    return data


def _fit_space(space: dict[str, Dimension], spec: BackboneSpec, data: ImageFolder, strength):
    """Fit the search space to the data: its augmentation, and the backbone's layer names."""
    _fit_augmentation(space, data, strength)
    _check_layer_names(space, spec, data.image_size)


def _fit_augmentation(space: dict[str, Dimension], data: ImageFolder, augment_strength) -> None:
    """Fix `augment_strength` at 0 for data without augmentation; else check its range."""
    if not data.config.augment:
        if augment_strength is not None:
            raise KerasFTError(
                f"Invalid `augment_strength`: {augment_strength!r} has no effect on data without "
                "augmentation. Leave it out, or turn augmentation on (drop --no-augment)."
            )
        space["augment_strength"] = Dimension("augment_strength", "fixed", (0.0,))
    else:
        _check_strength(data, space["augment_strength"])


def _model_config(data: ImageFolder, checked: _Checked, seed: int) -> ModelConfig:
    """The `ModelConfig` every trial starts from: the data's classes and size, the options."""
    return ModelConfig(
        **{"num_classes": data.num_classes, "image_size": data.image_size, **checked.model_options},
        backbone=checked.spec.name,
        seed=seed,
    )


def _write_summary(
    output: Path, result: SearchResult, how: tuple, checked: _Checked, runner: TrialRunner
) -> None:
    """Write search.json: the search, its space, the fixed settings, the data and the best trial.

    Args:
        result: the search's `SearchResult`.
        how: `(search, trials, seed, grid_points)`, as given to `tune`.
        runner: the `TrialRunner` that ran the trials.
    """
    search, trials, seed, grid_points = how
    best = result.best
    summary = {
        "objective": OBJECTIVE,
        "search": search,
        "trials_requested": trials,
        "trials_run": len(result.trials),
        "seed": seed,
        "grid_points": grid_points if search == "grid" else None,
        "initial_random_trials": initial_points(trials) if search == "bayesian" else None,
        "space": {name: checked.space[name].describe() for name in SETTINGS},
        "fixed": _fixed_settings(runner.model, checked.training, checked.fit_arguments),
        "data": dataclasses.asdict(runner.data.config),
        "best": {
            **result.best_trial,
            "run_dir": "best",
            "test_accuracy": best.metrics["accuracy"] if best.metrics else None,
        },
        "keras_tuner_version": checked.keras_tuner.__version__,
    }
    (output / "search.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _fixed_settings(model: ModelConfig, training: TrainingConfig, fit_arguments: dict) -> dict:
    """What every trial shares, for `search.json`: the configs' fields that are not searched."""
    return {
        k: v
        for k, v in {**to_dict(model), **to_dict(training), **fit_arguments}.items()
        if k not in SETTINGS and k not in ("num_classes", "callbacks")
    }


__all__ = ["SearchResult", "tune"]
