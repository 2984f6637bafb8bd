"""The trials of `tune`: KerasTuner's `Tuner` whose trial is a whole keras_ft fit.

`TrialRunner` fits and scores each trial KerasTuner proposes, keeps the best
model and writes `trials.csv` and `trials.json` as trials end; `run_search`
runs KerasTuner's search, each trial by a `TrialRunner`, in a scratch folder.
`keras_ft.tools.search` checks the arguments and writes the rest of the output.
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

from keras_ft.data.folder import ImageFolder
from keras_ft.task.finetuner import FineTuner
from keras_ft.tools.search_space import (
    OBJECTIVE,
    SETTINGS,
    hyperparameters,
    oracle,
    unfreeze_value,
)
from keras_ft.utils.errors import KerasFTError

COLUMNS = ("trial", "status", *SETTINGS, OBJECTIVE, "val_loss", "seconds", "best", "error")


def data_options(data: ImageFolder, strength: float) -> dict:
    """`ImageFolder` arguments of `data` with rotation, zoom and contrast scaled by `strength`."""
    accepted = set(inspect.signature(ImageFolder).parameters)
    options = {k: v for k, v in dataclasses.asdict(data.config).items() if k in accepted}
    if data.config.augment:
        for name in ("rotation", "zoom", "contrast"):
            options[name] = getattr(data.config, name) * strength
        options["augment"] = data.config.flip is not False or strength > 0  # True or "auto"
    return options


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
        options = data_options(data, strength)
        same = options == data_options(data, 1.0) or not data.config.augment
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


def run_search(keras_tuner, runner: TrialRunner, space, how: tuple, verbose, output: Path) -> None:
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


__all__ = ["COLUMNS", "TrialRunner", "data_options", "run_search"]
