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

from keras_ft.backbones import get_backbone
from keras_ft.config import (
    ModelConfig,
    TrainingConfig,
    check,
    is_int,
    is_number,
    options_of,
    to_dict,
)
from keras_ft.data import ImageFolder
from keras_ft.errors import KerasFTError
from keras_ft.finetuner import FineTuner
from keras_ft.output import check_output

SEARCHES = ("random", "bayesian", "grid")
OBJECTIVE = "val_accuracy"
# The searched settings, in the order KerasTuner sees them (grid search varies the last first).
SETTINGS = ("head_lr", "finetune_lr", "unfreeze", "dropout", "dense_units", "augment_strength")
COLUMNS = ("trial", "status", *SETTINGS, OBJECTIVE, "val_loss", "seconds", "best", "error")
# Each setting's command-line flags: (fixed, searched).
FLAGS = {
    "head_lr": ("--head-lr", "--head-lr-range LOW HIGH"),
    "finetune_lr": ("--finetune-lr", "--finetune-lr-range LOW HIGH"),
    "unfreeze": ("--unfreeze", "--unfreeze-choices CHOICE [CHOICE ...]"),
    "dropout": ("--dropout", "--dropout-range LOW HIGH"),
    "dense_units": ("--dense-units", "--dense-units-choices UNITS [UNITS ...]"),
    "augment_strength": (None, "--augment-range LOW HIGH"),
}
# FineTuner and fit arguments that tune sets itself (searched, or decided per trial).
_OWN_ARGUMENTS = (
    *SETTINGS,
    *("self", "data", "backbone", "num_classes", "seed", "preprocessing", "verbose", "evaluate"),
)
_REFUSED_FIT_ARGUMENTS = ("checkpoint_dir", "resume")


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a fixed value, a numeric range, or a list of choices.

    Attributes:
        name: the setting, one of `SETTINGS`.
        kind: `"fixed"`, `"range"` or `"choice"`.
        values: the fixed value `(v,)`, the range `(low, high)`, or the choices.
        log: for a range, sample on a log scale (learning rates).
    """

    name: str
    kind: str
    values: tuple
    log: bool = False

    def describe(self) -> dict:
        """A JSON-ready description, for `search.json`."""
        if self.kind == "range":
            low, high = self.values
            return {"type": "log_range" if self.log else "range", "low": low, "high": high}
        if self.kind == "choice":
            return {"type": "choice", "values": list(self.values)}
        return {"type": "fixed", "value": self.values[0]}


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


def _fix(name: str) -> str:
    fixed, searched = FLAGS[name]
    flags = f"{searched}" + (f" (or {fixed} VALUE to fix it)" if fixed else "")
    return f"On the command line: {flags}."


def numeric_dimension(name: str, value, low_ok, bound: str, log: bool = False) -> Dimension:
    """A range `(low, high)` with `low < high` to search, or one number to keep fixed.

    Args:
        name: the argument's name, for the error message.
        value: a number, or a `(low, high)` pair.
        low_ok: a predicate every value must satisfy.
        bound: what `low_ok` requires, in words (e.g. "> 0").
        log: sample on a log scale.
    """
    if is_number(value):
        check(low_ok(value), name, f"a number {bound} or a (low, high) range", value, _fix(name))
        return Dimension(name, "fixed", (float(value),))
    pair = tuple(value) if isinstance(value, (tuple, list)) else None
    check(
        pair is not None and len(pair) <= 2 and all(is_number(v) for v in pair),
        name,
        "a (low, high) range of numbers, or one number to keep it fixed",
        value,
        _fix(name),
    )
    check(len(pair) == 2, name, "a (low, high) range, not an empty one", value, _fix(name))
    low, high = float(pair[0]), float(pair[1])
    if low == high:
        raise KerasFTError(
            f"Invalid `{name}`: the range {value!r} is empty (low == high). Pass low < high "
            f"to search it, or `{name}={low!r}` to keep it fixed. {_fix(name)}"
        )
    if low > high:
        raise KerasFTError(
            f"Invalid `{name}`: the range {value!r} is inverted (low > high). "
            f"Pass ({high!r}, {low!r}). {_fix(name)}"
        )
    check(low_ok(low) and low_ok(high), name, f"a range of numbers {bound}", value, _fix(name))
    return Dimension(name, "range", (low, high), log)


def choice_dimension(name: str, value, valid, expected: str) -> Dimension:
    """Choices to search (a list or tuple, duplicates dropped), or one value to keep fixed."""
    if not isinstance(value, (tuple, list)):
        check(valid(value), name, expected, value, _fix(name))
        return Dimension(name, "fixed", (value,))
    check(len(value) > 0, name, f"at least one choice: {expected}", value, _fix(name))
    for item in value:
        check(valid(item), name, f"choices each {expected}", value, _fix(name))
    choices = tuple(dict.fromkeys(value))
    return Dimension(name, "fixed" if len(choices) == 1 else "choice", choices)


def _valid_unfreeze(value) -> bool:
    return (is_int(value) and value >= 1) or (isinstance(value, str) and value != "")


def check_search(
    trials=10,
    search="random",
    grid_points=3,
    head_lr=(1e-4, 1e-2),
    finetune_lr=(1e-5, 1e-3),
    unfreeze=("all",),
    dropout=(0.0, 0.5),
    dense_units=(0, 128, 256),
    augment_strength=(0.0, 2.0),
) -> dict[str, Dimension]:
    """Check the search arguments (see `tune`) and return the space, one `Dimension` each.

    Cheap and independent of the data: the command line calls it before
    reading any image, so a bad range is refused at once.
    """
    check(is_int(trials) and trials >= 1, "trials", "an int >= 1", trials, "E.g. --trials 10.")
    check(
        search in SEARCHES,
        "search",
        f"one of {', '.join(map(repr, SEARCHES))}",
        search,
        "E.g. --search bayesian.",
    )
    check(is_int(grid_points) and grid_points >= 2, "grid_points", "an int >= 2", grid_points)
    return {
        "head_lr": numeric_dimension("head_lr", head_lr, lambda v: v > 0, "> 0", log=True),
        "finetune_lr": numeric_dimension(
            "finetune_lr", finetune_lr, lambda v: v > 0, "> 0", log=True
        ),
        "unfreeze": choice_dimension(
            "unfreeze",
            unfreeze,
            _valid_unfreeze,
            "'all', a backbone layer name, or a number of top layers >= 1",
        ),
        "dropout": numeric_dimension("dropout", dropout, lambda v: 0 <= v < 1, "in [0, 1)"),
        "dense_units": choice_dimension(
            "dense_units",
            dense_units,
            lambda v: is_int(v) and v >= 0,
            "an int >= 0 (the hidden layer's width; 0: no hidden layer)",
        ),
        "augment_strength": numeric_dimension(
            "augment_strength", augment_strength, lambda v: v >= 0, ">= 0"
        ),
    }


def _import_keras_tuner():
    try:
        import keras_tuner
    except ImportError:
        raise KerasFTError(
            "Hyperparameter search needs KerasTuner, which is not installed: "
            'pip install "keras-ft[tune]"'
        ) from None
    return keras_tuner


def _grid_values(dimension: Dimension, points: int) -> tuple[float, ...]:
    """`points` values evenly spread over a range (geometrically for a log range), low first."""
    low, high = dimension.values
    if dimension.log:
        spread = [low * (high / low) ** (i / (points - 1)) for i in range(points)]
    else:
        spread = [low + (high - low) * i / (points - 1) for i in range(points)]
    return tuple(dict.fromkeys(float(f"{v:.6g}") for v in spread))


def hyperparameters(space: dict[str, Dimension], search: str, grid_points: int = 3):
    """The KerasTuner `HyperParameters` of `space`.

    Ranges become `Float`s, sampled on a log scale for learning rates; for a
    grid search they become `grid_points` ordered values instead. Unfreeze
    choices are kept as strings (KerasTuner wants one type per choice).
    """
    keras_tuner = _import_keras_tuner()
    hp = keras_tuner.HyperParameters()
    for name in SETTINGS:
        dimension = space[name]
        if dimension.kind == "fixed":
            value = dimension.values[0]
            hp.Fixed(name, str(value) if name == "unfreeze" else value)
        elif dimension.kind == "choice":
            values = [str(v) for v in dimension.values] if name == "unfreeze" else dimension.values
            hp.Choice(name, list(values), ordered=name != "unfreeze")
        elif search == "grid":
            hp.Choice(name, list(_grid_values(dimension, grid_points)), ordered=True)
        else:
            low, high = dimension.values
            hp.Float(name, low, high, sampling="log" if dimension.log else "linear")
    return hp


def initial_points(trials: int) -> int:
    """Random trials a Bayesian search starts with before its model proposes: a third, >= 3."""
    return max(3, trials // 3)


def _oracle(keras_tuner, search: str, trials: int, seed: int, hp):
    oracles = {
        "random": keras_tuner.oracles.RandomSearchOracle,
        "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
        "grid": keras_tuner.oracles.GridSearchOracle,
    }
    options = {}
    if search == "bayesian":  # KerasTuner's default, 3 random trials per setting, is most budgets
        options["num_initial_points"] = initial_points(trials)
    return oracles[search](
        **options,
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_trials=trials,
        hyperparameters=hp,
        tune_new_entries=False,
        allow_new_entries=False,
        # KerasTuner draws a random seed for a falsy one: 0 must stay reproducible too.
        seed=seed % (2**31 - 1) + 1,
    )


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


def _unfreeze_value(value):
    """KerasTuner holds unfreeze choices as strings; a number means the top N layers."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _check_layer_names(space: dict[str, Dimension], spec, image_size) -> None:
    """Refuse, before any trial, an unfreeze choice naming no layer of the backbone."""
    names = [
        v
        for v in space["unfreeze"].values
        if isinstance(v, str) and v not in ("all", spec.finetune_from) and not v.isdigit()
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
    (see `keras_ft.output.check_output`); with `overwrite` an earlier search or
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


def _make_kt_tuner(keras_tuner, oracle, directory: str, run_one, record):
    """A KerasTuner `Tuner` whose trial is a whole keras_ft fit (see `tune`).

    Named `kt_tuner` wherever it is held: in keras_ft, `tuner` is a `FineTuner`.
    """

    class Refused(keras_tuner.errors.FatalError):
        """Bad input found in a trial: stops the search (KerasTuner would go on)."""

    class FineTuneSearch(keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            try:
                return run_one(trial)
            except KerasFTError as error:
                raise Refused(error) from error

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            record(self.oracle.get_trial(trial.trial_id))

    kt_tuner = FineTuneSearch(
        oracle=oracle, directory=directory, project_name="search", overwrite=True
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
    if not isinstance(backbone, str):
        raise KerasFTError(
            f"`tune` needs a registry backbone name (`keras-ft backbones`), received "
            f"{type(backbone).__name__}: every trial must start from the same fresh weights. "
            "Register a backbone of your own with keras_ft.register_backbone(BackboneSpec("
            "name, builder, preprocessing)) and pass its name."
        )
    spec = get_backbone(backbone)
    space = check_search(
        trials,
        search,
        grid_points,
        head_lr,
        finetune_lr,
        tuple(dict.fromkeys(v for v in (spec.finetune_from, "all") if v))
        if unfreeze is None
        else unfreeze,
        dropout,
        dense_units,
        (0.0, 2.0) if augment_strength is None else augment_strength,
    )
    check(is_int(seed), "seed", "an int", seed)
    model_options, training_options, fit_arguments = _split_options(options)
    training = TrainingConfig(**training_options)  # checked before any image is read
    keras_tuner = _import_keras_tuner()
    check_output(output, (), overwrite)
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
    if not data.config.augment:
        if augment_strength is not None:
            raise KerasFTError(
                f"Invalid `augment_strength`: {augment_strength!r} has no effect on data without "
                "augmentation. Leave it out, or turn augmentation on (drop --no-augment)."
            )
        space["augment_strength"] = Dimension("augment_strength", "fixed", (0.0,))
    else:
        _check_strength(data, space["augment_strength"])
    _check_layer_names(space, spec, data.image_size)

    model = ModelConfig(
        **{"num_classes": data.num_classes, "image_size": data.image_size, **model_options},
        backbone=spec.name,
        seed=seed,
    )
    output = _prepare_output(output, overwrite, data)
    fixed = {
        k: v
        for k, v in {**to_dict(model), **to_dict(training), **fit_arguments}.items()
        if k not in SETTINGS and k not in ("num_classes", "callbacks")
    }
    rows: list[dict] = []
    pending: dict[str, dict] = {}
    kept: dict = {"row": None, "tuner": None}

    def run_one(trial) -> dict:
        values = trial.hyperparameters.values
        settings = {name: values[name] for name in SETTINGS}
        settings["unfreeze"] = _unfreeze_value(settings["unfreeze"])
        started = time.perf_counter()
        strength = float(settings["augment_strength"])
        data_options = _data_options(data, strength)
        same = data_options == _data_options(data, 1.0) or not data.config.augment
        trial_data = data if same else ImageFolder(**data_options, quiet=True)
        width = int(settings["dense_units"])
        candidate = FineTuner.from_configs(
            dataclasses.replace(
                model, dropout=float(settings["dropout"]), dense_units=(width,) if width else ()
            ),
            dataclasses.replace(
                training,
                head_lr=float(settings["head_lr"]),
                finetune_lr=float(settings["finetune_lr"]),
                unfreeze=settings["unfreeze"],
            ),
        )
        candidate.fit(trial_data, verbose=verbose, evaluate=False, **fit_arguments)
        scores = candidate.evaluate(trial_data.validation)
        row = {
            "trial": int(trial.trial_id) + 1,
            **settings,
            OBJECTIVE: scores["accuracy"],
            "val_loss": scores["loss"],
            "seconds": round(time.perf_counter() - started, 2),
        }
        pending[trial.trial_id] = row
        if _better(row, kept["row"]):
            kept.update(row=row, tuner=candidate, data=trial_data)
        else:
            del candidate, trial_data
            gc.collect()
        return {OBJECTIVE: row[OBJECTIVE], "val_loss": row["val_loss"]}

    def record(trial) -> None:
        status = str(trial.status)
        row = pending.pop(trial.trial_id, None)
        if row is None:  # failed before scoring: KerasTuner keeps the traceback
            values = trial.hyperparameters.values
            row = {"trial": int(trial.trial_id) + 1, **{n: values.get(n) for n in SETTINGS}}
            row["unfreeze"] = _unfreeze_value(row["unfreeze"])
            lines = (trial.message or "").strip().splitlines()
            row["error"] = lines[-1] if lines else "failed"
        rows.append({"status": status, "best": False, **row})
        _write_table(output, [{k: r.get(k) for k in COLUMNS} for r in rows])

    scratch = tempfile.mkdtemp(prefix="keras_ft_tune_")
    try:
        oracle = _oracle(
            keras_tuner, search, trials, seed, hyperparameters(space, search, grid_points)
        )
        kt_tuner, refused = _make_kt_tuner(keras_tuner, oracle, scratch, run_one, record)
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

    best_row, best = kept["row"], kept["tuner"]
    if best is None:
        raise RuntimeError(
            f"Every trial of the search failed; see {output / 'trials.csv'} for the errors."
        )
    for row in rows:
        row["best"] = row["trial"] == best_row["trial"]
    rows = [{k: r.get(k) for k in COLUMNS} for r in rows]
    _write_table(output, rows)
    if kept["data"].test is not None:
        best.metrics = best.evaluate(kept["data"])
    best_dir = best.save(output / "best")
    best_row = next(row for row in rows if row["best"])
    summary = {
        "objective": OBJECTIVE,
        "search": search,
        "trials_requested": trials,
        "trials_run": len(rows),
        "seed": seed,
        "grid_points": grid_points if search == "grid" else None,
        "initial_random_trials": initial_points(trials) if search == "bayesian" else None,
        "space": {name: space[name].describe() for name in SETTINGS},
        "fixed": fixed,
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


__all__ = ["SEARCHES", "Dimension", "SearchResult", "check_search", "tune"]
