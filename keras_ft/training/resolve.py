"""Resolve, then train: each `"auto"` of a run decided from the data, once, into `Decisions`.

The augmentation (`flip="auto"`, `quarter_turns="auto"`) is decided before phase 1
by linear probes (`keras_ft.training.symmetry`), and training then reads data
whose options are `True` or `False`; a phase's `"auto"` learning rate is found by
the range test (`keras_ft.training.lr_find`) before that phase. A decision
already taken (read back from a checkpoint) is not taken again. The recipe's
settings are resolved before the model is built (`keras_ft.config.recipe`), the
fallback after phase 2 (`keras_ft.training.fallback`).
"""

from __future__ import annotations

from keras_ft.models.classifier import split_at_features
from keras_ft.training.decisions import Decisions
from keras_ft.training.lr_find import resolve, sweep
from keras_ft.training.symmetry import DECIDERS


def resolve_augmentation(model, data, probe, decisions: Decisions, verbose="auto"):
    """`data` with its `"auto"` flips and quarter turns decided (`data.decides`).

    Each is measured on the frozen backbone of `model` with the linear `probe`
    (see `keras_ft.training.symmetry.decide_flip`), printed unless `verbose`
    is 0, and kept in `decisions`.

    Returns:
        An `ImageFolder` sharing `data`'s images, whose options are decided.
    """
    decided = decisions.augmentation
    for name in data.decides:
        if name not in decided:
            decided[name] = DECIDERS[name](split_at_features(model)[0], data, probe)
            if verbose != 0:
                print(f"{name}='auto': {decided[name]['reason']}")
    chosen = {name: decided[name][name] for name in data.decides}
    return data.with_augmentation(**chosen) if chosen else data


def resolve_learning_rate(model, data, phase: str, config, decisions: Decisions, **sweeping):
    """`config` with `phase`'s `"auto"` learning rate resolved by the range test.

    The range test runs on `model` as it is before `phase` (after phase 1 for
    phase 2), on `data`'s augmented training batches; its summary is kept in
    `decisions`.

    Args:
        sweeping: `batch_size` (the global batch) and `verbose`.
    """
    name = f"{phase}_lr"
    if getattr(config, name) != "auto":
        return config
    verbose = sweeping.pop("verbose", "auto")
    if getattr(decisions, name) is None:
        found = sweep(model, data, phase, config, **sweeping)
        setattr(decisions, name, found.summary())
        if verbose != 0:
            print(
                f"{name}='auto': the learning-rate range test ({len(found.losses)} steps) "
                f"suggests {found.suggestion:.3g} (steepest descent at {found.steepest:.3g})"
            )
    return resolve(config, phase, getattr(decisions, name)["suggestion"])
