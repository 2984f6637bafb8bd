"""The search space of `tune`: what is searched, checked, and handed to KerasTuner.

Each searched setting is a `Dimension` (a fixed value, a numeric range or a
list of choices); `check_search` checks the arguments and builds them, and
`hyperparameters` and `oracle` turn them into KerasTuner's `HyperParameters`
and seeded oracle. Nothing here imports TensorFlow; KerasTuner is imported
only when the search starts. `keras_ft.tools.trials` runs the trials.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_ft.config import check, is_count, is_int, is_number
from keras_ft.utils.errors import KerasFTError

SEARCHES = ("random", "bayesian", "grid")
OBJECTIVE = "val_accuracy"
# The searched settings, in the order KerasTuner sees them (grid search varies the last first).
SETTINGS = ("head_lr", "finetune_lr", "unfreeze", "dropout", "dense_units", "augment_strength")
# Each setting's command-line flags: (fixed, searched).
FLAGS = {
    "head_lr": ("--head-lr", "--head-lr-range LOW HIGH"),
    "finetune_lr": ("--finetune-lr", "--finetune-lr-range LOW HIGH"),
    "unfreeze": ("--unfreeze", "--unfreeze-choices CHOICE [CHOICE ...]"),
    "dropout": ("--dropout", "--dropout-range LOW HIGH"),
    "dense_units": ("--dense-units", "--dense-units-choices UNITS [UNITS ...]"),
    "augment_strength": (None, "--augment-range LOW HIGH"),
}


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


def import_keras_tuner():
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
    keras_tuner = import_keras_tuner()
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


def oracle(keras_tuner, search: str, trials: int, seed: int, hp):
    """KerasTuner's seeded oracle for `search`, maximising `OBJECTIVE` over `hp`."""
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


def unfreeze_value(value):
    """KerasTuner holds unfreeze choices as strings; a number means the top N layers."""
    return int(value) if is_count(value) else value
