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
`keras_ft.tools.search_space`; this module runs the trials and writes the output.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import inspect
import json
import os
import shutil
import tempfile
import time
import warnings
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
    SEARCHES,
    SETTINGS,
    Dimension,
    check_search,
    hyperparameters,
    import_keras_tuner,
    initial_points,
    oracle,
    unfreeze_value,
)
from keras_ft.utils.errors import KerasFTError

COLUMNS = ("trial", "status", *SETTINGS, OBJECTIVE, "val_loss", "seconds", "best", "error")
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


def _data_options(data: ImageFolder, strength: float) -> dict:
    """`ImageFolder` arguments of `data` with rotation, zoom and contrast scaled by `strength`."""
    accepted = set(inspect.signature(ImageFolder).parameters)
    options = {k: v for k, v in dataclasses.asdict(data.config).items() if k in accepted}
    if data.config.augment:
        for name in ("rotation", "zoom", "contrast"):
            options[name] = getattr(data.config, name) * strength
        options["augment"] = data.config.flip is not False or strength > 0  # True or "auto"
    return options


def _check_strength(data: ImageFolder, dimension: Dimension) -> None:
    """Refuse a strength that scales rotation, zoom or contrast past what augmentation allows."""
    from keras_ft.config import DataConfig

    options = _data_options(data, max(dimension.values))
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


def _write_table(output: Path, rows: list[dict]) -> None:
    """Write trials.csv and trials.json, each atomically."""
    partial = output / ".trials.json.partial"
    partial.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(partial, output / "trials.json")
    partial = output / ".trials.csv.partial"
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if row.get(k) is None else row[k] for k in COLUMNS} for row in rows)
    os.replace(partial, output / "trials.csv")


def _better(row: dict, best: dict | None) -> bool:
    """Highest val_accuracy first, then lowest val_loss; ties keep the earlier trial."""
    if best is None:
        return True
    return (row[OBJECTIVE], -row["val_loss"]) > (best[OBJECTIVE], -best["val_loss"])


def _make_kt_tuner(keras_tuner, kt_oracle, directory: str, runner):
    """A KerasTuner `Tuner` whose trial is a whole keras_ft fit (see `tune`).

    Named `kt_tuner` wherever it is held: in keras_ft, `tuner` is a `FineTuner`.
    """

    class Refused(keras_tuner.errors.FatalError):
        """Bad input found in a trial: stops the search (KerasTuner would go on)."""

    class FineTuneSearch(keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            try:
                return runner.run(trial)
            except KerasFTError as error:
                raise Refused(error) from error

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            runner.record(self.oracle.get_trial(trial.trial_id))

    kt_tuner = FineTuneSearch(
        oracle=kt_oracle, directory=directory, project_name="search", overwrite=True
    )
    return kt_tuner, Refused


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

    Each trial is a whole two-phase `FineTuner.fit` with the trial's settings
    and the same `seed`, scored by accuracy on the validation split. Every
    searched argument takes a range (or choices) to search, or one value to
    keep fixed.

    Args:
        data: an `ImageFolder` with `validation_split > 0`, or a folder path
            (read with the backbone's input size, `validation_split=0.2` and
            `seed`).
        output: directory to write: `trials.csv`, `trials.json`, `search.json`
            and `best/`, the best trial's run directory (`keras_ft.load` and
            `keras-ft predict` read it). KerasTuner's own files go to a
            temporary folder, removed at the end.
        trials: how many settings to try (a grid search stops early when its
            grid is exhausted).
        search: `"random"`, `"bayesian"` (Gaussian-process Bayesian
            optimisation; the first third of the trials, at least 3, are
            random) or `"grid"` (ordered combinations, the last setting
            changing fastest).
        seed: seeds KerasTuner's proposals and every trial's training.
        head_lr: phase 1 learning rate: a `(low, high)` range, searched on a
            log scale, or one value.
        finetune_lr: phase 2 learning rate: a range (log scale) or one value.
        unfreeze: choices of where phase 2 unfreezes from (`"all"`, a backbone
            layer name, or a number of top layers), or one of them. `None`:
            the backbone's suggested layer (`keras-ft backbones`) and `"all"`.
        dropout: dropout before the classifier: a range in [0, 1) or one value.
        dense_units: choices of the head's hidden layer width (0: no hidden
            layer), or one width.
        augment_strength: a factor on the data's rotation, zoom and contrast
            (0: flips only): a range or one value. `None`: `(0.0, 2.0)`, or 0
            when the data is not augmented.
        grid_points: values per range in a grid search (log-spaced for
            learning rates).
        backbone: a registry name (`keras-ft backbones`, or one added with
            `keras_ft.register_backbone`); each trial builds it afresh.
        overwrite: replace an existing `output`.
        verbose: 0 for silence; otherwise KerasTuner's trial summaries and
            Keras progress.
        **options: the same for every trial: any other `FineTuner` argument
            (`weights`, `pooling`, `deterministic`: the same seed then gives
            the same trials and scores, ...) and any `FineTuner.fit` argument
            (`head_epochs`, `finetune_epochs`, `momentum`, `callbacks`, ...).
            Each trial's `FineTuner` is `FineTuner.from_configs` of these
            configs with the trial's settings replaced.

    Returns:
        A `SearchResult`: the trial rows, the best row, the best run directory
        and the best fitted `FineTuner`.

    Example:

    >>> data = keras_ft.ImageFolder("flowers/train", test_dir="flowers/test", image_size=224)
    >>> result = keras_ft.tune(data, "runs/flowers-search", trials=20, search="bayesian",
    ...                        backbone="mobilenetv3small", head_lr=(1e-4, 1e-2))
    >>> result.best_trial["val_accuracy"], result.best_run_dir
    """
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
    check_output(output, (), overwrite)
    data = _search_data(data, spec, seed, verbose)
    _fit_augmentation(space, data, augment_strength)
    _check_layer_names(space, spec, data.image_size)
    model = ModelConfig(
        **{"num_classes": data.num_classes, "image_size": data.image_size, **model_options},
        backbone=spec.name,
        seed=seed,
    )
    output = _prepare_output(output, overwrite, data)
    runner = TrialRunner(data, model, training, fit_arguments, verbose, output)
    _search(keras_tuner, runner, space, (search, trials, seed, grid_points), verbose, output)
    rows, best_row, best_dir = runner.finish()
    best = runner.best.tuner
    summary = {
        "objective": OBJECTIVE,
        "search": search,
        "trials_requested": trials,
        "trials_run": len(rows),
        "seed": seed,
        "grid_points": grid_points if search == "grid" else None,
        "initial_random_trials": initial_points(trials) if search == "bayesian" else None,
        "space": {name: space[name].describe() for name in SETTINGS},
        "fixed": _fixed_settings(model, training, fit_arguments),
        "data": dataclasses.asdict(data.config),
        "best": {
            **best_row,
            "run_dir": "best",
            "test_accuracy": best.metrics["accuracy"] if best.metrics else None,
        },
        "keras_tuner_version": keras_tuner.__version__,
    }
    (output / "search.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return SearchResult(rows, best_row, best_dir, best, str(output))


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


def _fixed_settings(model: ModelConfig, training: TrainingConfig, fit_arguments: dict) -> dict:
    """What every trial shares, for `search.json`: the configs' fields that are not searched."""
    return {
        k: v
        for k, v in {**to_dict(model), **to_dict(training), **fit_arguments}.items()
        if k not in SETTINGS and k not in ("num_classes", "callbacks")
    }


@dataclass
class Kept:
    """The best trial so far: its row, its fitted `FineTuner` and the data it trained on."""

    row: dict
    tuner: FineTuner
    data: ImageFolder


class TrialRunner:
    """Runs each trial KerasTuner proposes, and keeps the trial table and the best model.

    Args:
        data: the search's `ImageFolder`.
        model: the `ModelConfig` every trial starts from.
        training: the `TrainingConfig` every trial starts from.
        fit_arguments: the other `FineTuner.fit` arguments (`callbacks`, ...).
        verbose: Keras verbosity of each trial's fit.
        output: the search folder, where `trials.csv` and `trials.json` are kept up to date.
    """

    def __init__(self, data, model, training, fit_arguments, verbose, output: Path):
        self.data, self.model, self.training = data, model, training
        self.fit_arguments, self.verbose, self.output = fit_arguments, verbose, output
        self.rows: list[dict] = []  # one per finished trial, in order
        self.best: Kept | None = None
        self._pending: dict[str, dict] = {}  # scored rows, until KerasTuner ends their trial

    def run(self, trial) -> dict:
        """Fit and score one trial; return its metrics for KerasTuner."""
        settings = {name: trial.hyperparameters.values[name] for name in SETTINGS}
        settings["unfreeze"] = unfreeze_value(settings["unfreeze"])
        started = time.perf_counter()
        trial_data = self._trial_data(float(settings["augment_strength"]))
        candidate = self._fine_tuner(settings)
        candidate.fit(  # a trial trains as drawn, unless the caller asked for a recipe
            trial_data,
            verbose=self.verbose,
            evaluate=False,
            **{"recipe": None, **self.fit_arguments},
        )
        scores = candidate.evaluate(trial_data.validation)
        row = {
            "trial": int(trial.trial_id) + 1,
            **settings,
            OBJECTIVE: scores["accuracy"],
            "val_loss": scores["loss"],
            "seconds": round(time.perf_counter() - started, 2),
        }
        self._pending[trial.trial_id] = row
        if _better(row, self.best.row if self.best else None):
            self.best = Kept(row, candidate, trial_data)
        else:
            del candidate, trial_data
            gc.collect()
        return {OBJECTIVE: row[OBJECTIVE], "val_loss": row["val_loss"]}

    def record(self, trial) -> None:
        """Add an ended trial (scored, or failed before scoring) to the table on disk."""
        row = self._pending.pop(trial.trial_id, None)
        if row is None:  # failed before scoring: KerasTuner keeps the traceback
            values = trial.hyperparameters.values
            row = {"trial": int(trial.trial_id) + 1, **{n: values.get(n) for n in SETTINGS}}
            row["unfreeze"] = unfreeze_value(row["unfreeze"])
            lines = (trial.message or "").strip().splitlines()
            row["error"] = lines[-1] if lines else "failed"
        self.rows.append({"status": str(trial.status), "best": False, **row})
        _write_table(self.output, [{k: r.get(k) for k in COLUMNS} for r in self.rows])

    def finish(self) -> tuple[list[dict], dict, str]:
        """Mark the best trial, write the final table, evaluate and save the best model.

        Returns:
            `(rows, best row, best run directory)`.
        """
        if self.best is None:
            raise RuntimeError(
                f"Every trial of the search failed; see {self.output / 'trials.csv'} for the "
                "errors."
            )
        for row in self.rows:
            row["best"] = row["trial"] == self.best.row["trial"]
        rows = [{k: r.get(k) for k in COLUMNS} for r in self.rows]
        _write_table(self.output, rows)
        best = self.best.tuner
        if self.best.data.test is not None:
            best.metrics = best.evaluate(self.best.data)
        best_dir = best.save(self.output / "best")
        return rows, next(row for row in rows if row["best"]), best_dir

    def _trial_data(self, strength: float) -> ImageFolder:
        """The search's data, re-read with augmentation scaled by `strength` unless that is 1."""
        data = self.data
        options = _data_options(data, strength)
        same = options == _data_options(data, 1.0) or not data.config.augment
        return data if same else ImageFolder(**options, quiet=True)

    def _fine_tuner(self, settings: dict) -> FineTuner:
        """The trial's `FineTuner`: the shared configs with the trial's settings replaced."""
        width = int(settings["dense_units"])
        return FineTuner.from_configs(
            dataclasses.replace(
                self.model,
                dropout=float(settings["dropout"]),
                dense_units=(width,) if width else (),
            ),
            dataclasses.replace(
                self.training,
                head_lr=float(settings["head_lr"]),
                finetune_lr=float(settings["finetune_lr"]),
                unfreeze=settings["unfreeze"],
            ),
        )


def _search(keras_tuner, runner: TrialRunner, space, how: tuple, verbose, output: Path) -> None:
    """Run KerasTuner's search over `space`, each trial by `runner`, in a scratch folder.

    Args:
        how: `(search, trials, seed, grid_points)`, as given to `tune`.

    Bad input found in a trial stops the search and removes `output`.
    """
    search, trials, seed, grid_points = how
    scratch = tempfile.mkdtemp(prefix="keras_ft_tune_")
    try:
        kt_oracle = oracle(
            keras_tuner, search, trials, seed, hyperparameters(space, search, grid_points)
        )
        kt_tuner, refused = _make_kt_tuner(keras_tuner, kt_oracle, scratch, runner)
        kt_tuner.oracle.verbose = 0 if verbose == 0 else 1
        try:
            with warnings.catch_warnings():  # KerasTuner's own use of deprecated threading names
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="keras_tuner")
                kt_tuner.search()
        except refused as error:  # bad input: the search is void, leave nothing behind
            shutil.rmtree(output, ignore_errors=True)
            raise error.args[0] from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["SEARCHES", "Dimension", "SearchResult", "TrialRunner", "check_search", "tune"]
