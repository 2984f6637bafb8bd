"""`reproduce_run`: re-train a run from its record and compare the final weights.

The record gives the configuration (`RunConfig`) and the decisions (`Decisions`,
replayed rather than measured again); the data is checked against the recorded
hashes before anything trains.
"""

from __future__ import annotations

import tempfile

from keras_ft.config import RunConfig, to_dict
from keras_ft.data.folder import ImageFolder
from keras_ft.data.scan import scan_folder
from keras_ft.models.backbones import is_registered, not_registered
from keras_ft.runs.loading import verify_run
from keras_ft.runs.manifest import checkpoint_dir
from keras_ft.runs.reproducibility import compare_files, environment, file_hashes, weights_sha256
from keras_ft.task.finetuner import FineTuner
from keras_ft.training.decisions import Decisions
from keras_ft.utils.errors import KerasFTError


def reproduce_run(run_dir, data_dir=None, test_dir=None, verbose="auto", signing_key=None) -> dict:
    """Re-train a run from its record and compare the final weights.

    The data is checked first: if any file was added, removed or changed since
    the run, nothing is trained and the differences are listed.

    Args:
        run_dir: a run directory.
        data_dir: the training folder, if it moved (default: the recorded one).
        test_dir: the held-out folder, if it moved.
        verbose: Keras verbosity of the re-training.
        signing_key: as for `keras_ft.load`: the run directory is verified first.

    Returns:
        A dict: `match` (bool), `recorded` and `reproduced` weight hashes, and
        `environment_differences` ({key: (recorded, now)}; among them
        `backbone_weights_sha256` when the backbone started from other weights).
    """
    record, _ = verify_run(run_dir, signing_key)
    if record["data"] is None or record["training"] is None or "data_files" not in record:
        raise KerasFTError(
            f"'{run_dir}' records no training data or settings (it was saved without "
            "`FineTuner.fit` on an ImageFolder), so it cannot be re-trained."
        )
    config = RunConfig.from_record(record, f"{run_dir}/run.json")
    data_config, model_config, training = config.data, config.model, config.training
    _check_backbone(run_dir, model_config.backbone, record)
    data_dir = data_dir or data_config.directory
    test_dir = test_dir or data_config.test_dir
    for split, folder in (("train", data_dir), ("test", test_dir)):
        if folder is None:
            continue
        report = scan_folder(folder, class_names=tuple(record["class_names"]))
        recorded = record["data_files"].get(split) or {}
        changes = compare_files(recorded, file_hashes(report.files))
        if any(changes.values()):
            listing = "\n".join(
                f"  {kind}: {path}" for kind, paths in changes.items() for path in paths
            )
            raise KerasFTError(
                f"The {split} data in '{folder}' differs from the run's:\n{listing}\n"
                "Restore the original files (or pass --data/--test-dir to where they are)."
            )
    values = {**to_dict(data_config), "directory": data_dir, "test_dir": test_dir}
    data = ImageFolder(**values)
    decisions = _recorded_decisions(run_dir, record)
    tuner = FineTuner.from_configs(model_config, training)
    with tempfile.TemporaryDirectory() as scratch:
        tuner.fit(  # run.json holds the options the recipe resolved: none is applied again
            data,
            recipe=None,
            decisions=decisions,  # the flips, turns and rates the run decided: replayed
            verbose=verbose,
            evaluate=False,
            checkpoint_dir=checkpoint_dir(scratch),
        )
    reproduced = weights_sha256(tuner.model)
    now, then = environment(), record.get("environment", {})
    differences = {k: (then.get(k), now[k]) for k in now if then.get(k) != now[k]}
    started = record.get("backbone_weights_sha256")  # absent in runs before it was recorded
    if started and started != tuner.backbone_weights_sha256:  # another ImageNet file, say
        differences["backbone_weights_sha256"] = (started, tuner.backbone_weights_sha256)
    return {
        "match": reproduced == record["weights_sha256"],
        "recorded": record["weights_sha256"],
        "reproduced": reproduced,
        "environment_differences": differences,
    }


def _check_backbone(run_dir, name: str, record: dict) -> None:
    """Refuse a run whose backbone cannot be rebuilt by name in this process."""
    built = record.get("backbone")  # absent in older runs: they rebuilt registry names only
    if built and not is_registered(name):
        raise KerasFTError(f"Cannot reproduce '{run_dir}': {not_registered(name, built)}")
    if not is_registered(name) or ("backbone" in record and built is None):
        raise KerasFTError(
            f"'{run_dir}' used a custom backbone ({name!r}) passed as a keras.Model; "
            "`reproduce` rebuilds backbones by their registry name. Register its builder "
            "with keras_ft.register_backbone and train with that name, or re-run your own "
            "script with the same seed."
        )


def _recorded_decisions(run_dir, record: dict) -> Decisions:
    """The run's `Decisions`, its range-test rates checked (a damaged one is refused)."""
    decisions = Decisions.from_record(record.get("decisions"))
    for name in ("head_lr", "finetune_lr"):
        found = getattr(decisions, name)
        rate = found.get("suggestion") if found is not None else 1.0
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
            raise KerasFTError(
                f"'{run_dir}/run.json' is damaged: decisions.{name}.suggestion should be "
                f"the rate the range test found, received {rate!r}. Restore the run "
                "directory from a copy."
            )
    return decisions
