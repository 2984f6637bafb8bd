"""Resolve, then train: each `"auto"` of a run decided from the data, once, into `Decisions`.

The augmentation (`flip="auto"`, `quarter_turns="auto"`) is decided before phase 1
by linear probes (`keras_ft.training.symmetry`), and training then reads data
whose options are `True` or `False`; with a `time_budget`, the epochs are then
planned (`keras_ft.training.budget`); a phase's `"auto"` learning rate is found
by the range test (`keras_ft.training.lr_find`) before that phase. A decision
already taken (read back from a checkpoint, or replayed) is not taken again. The recipe's
settings are resolved before the model is built (`keras_ft.config.recipe`), the
fallback after phase 2 (`keras_ft.training.fallback`).
"""

from __future__ import annotations

import dataclasses
import time

from keras_ft.models.classifier import split_at_features
from keras_ft.training.budget import epoch_seconds, fixed_seconds, measure, plan_epochs
from keras_ft.training.decisions import Decisions
from keras_ft.training.features import features_cached, head_copies
from keras_ft.training.lr_find import resolve, sweep
from keras_ft.training.symmetry import DECIDERS, grid_probe


def resolve_augmentation(model, data, probe, decisions: Decisions, verbose="auto"):
    """`data` with its `"auto"` flips and quarter turns decided (`data.decides`).

    Each is measured on the frozen backbone of `model` with the linear `probe`
    (see `keras_ft.training.symmetry.decide_flip`), printed unless `verbose`
    is 0, and kept in `decisions`.

    Returns:
        An `ImageFolder` sharing `data`'s images, whose options are decided.
    """
    decided = decisions.augmentation
    pending = [name for name in data.decides if name not in decided]
    if pending:  # one extractor and one shallow grid probe for both decisions
        extractor = split_at_features(model)[0]
        grid = grid_probe(extractor, data)
    for name in pending:
        decided[name] = DECIDERS[name](extractor, data, probe, grid)
        if verbose != 0:
            print(f"{name}='auto': {decided[name]['reason']}")
    chosen = {name: decided[name][name] for name in data.decides}
    return data.with_augmentation(**chosen) if chosen else data


def resolve_learning_rate(run, phase: str):
    """`run.config` with `phase`'s `"auto"` learning rate resolved by the range test.

    The range test runs on `run.model` as it is before `phase` (after phase 1
    for phase 2), on the run's augmented training batches, at its global
    batch size; its summary is kept in the run's decisions.
    """
    config, decisions, name = run.config, run.history.decisions, f"{phase}_lr"
    if getattr(config, name) != "auto":
        return config
    if getattr(decisions, name) is None:
        found = sweep(run.model, run.data, phase, config, batch_size=run.batch_size)
        setattr(decisions, name, found.summary())
        if run.verbose != 0:
            print(
                f"{name}='auto': the learning-rate range test ({len(found.losses)} steps) "
                f"suggests {found.suggestion:.3g} (steepest descent at {found.steepest:.3g})"
            )
    return resolve(config, phase, getattr(decisions, name)["suggestion"])


def resolve_time_budget(run, deadline: float, verbose="auto"):
    """`run.config` with the epochs of both phases planned to end by `deadline` (a
    `time.perf_counter` value), for `config.time_budget`; the plan is kept in
    `run.history.decisions` (a recorded one is replayed, nothing measured).

    Phase 2's `warmup_epochs` and `gradual_unfreeze` shrink with its epochs
    where they would no longer fit in them.
    """
    config, decisions = run.config, run.history.decisions
    if config.time_budget is None:
        return config
    if decisions.time_budget is None:
        copies = head_copies(config, run.data)
        cached = features_cached(config, run.data) or bool(copies)
        measured = measure(run.model, run.data, config, run.batch_size, cached)
        images = {"train": len(run.data.train_files), "validation": len(run.data.validation_files)}
        per_epoch = epoch_seconds(measured, run.steps, images, cached)
        decided = set(decisions.record())
        fixed = fixed_seconds(measured, config, images, decided)
        if run.frozen is None and cached:  # phase 1 computes the features itself
            fixed += (images["train"] + images["validation"]) * measured["forward_image"]
        fixed += copies * images["train"] * measured["forward_image"]  # augmented copies
        configured = {"head": config.head_epochs, "finetune": config.finetune_epochs}
        left = deadline - time.perf_counter()
        planned = plan_epochs(left, configured, per_epoch, fixed)
        decisions.time_budget = {
            "budget_seconds": config.time_budget,
            "seconds_left": round(left, 3),
            "epoch_seconds": {phase: round(s, 4) for phase, s in per_epoch.items()},
            "fixed_seconds": round(fixed, 3),
            "configured": configured,
            "head_epochs": planned["head"],
            "finetune_epochs": planned["finetune"],
            "reason": budget_reason(left, configured, planned, per_epoch, fixed),
        }
        if verbose != 0:
            print(f"time_budget={config.time_budget:g}: {decisions.time_budget['reason']}")
    plan = decisions.time_budget
    tuned = plan["finetune_epochs"]
    return dataclasses.replace(
        config,
        head_epochs=plan["head_epochs"],
        finetune_epochs=tuned,
        warmup_epochs=min(config.warmup_epochs, tuned),
        gradual_unfreeze=min(config.gradual_unfreeze, max(1, tuned)),
    )


def budget_reason(left: float, configured: dict, planned: dict, per_epoch: dict, fixed) -> str:
    """The plan in one sentence, for the user."""
    measured = (
        f"{left:.0f} s left; an epoch takes {per_epoch['head']:.2g} s in phase 1 and "
        f"{per_epoch['finetune']:.2g} s in phase 2 (timed on a few steps), {fixed:.0f} s "
        "more are fixed"
    )
    if planned == configured:
        epochs = f"{configured['head']} + {configured['finetune']}"
        return f"{measured}: the configured {epochs} epochs fit."
    return (
        f"{measured}: {planned['head']} + {planned['finetune']} epochs instead of "
        f"{configured['head']} + {configured['finetune']}."
    )
