"""What training records: per-epoch metrics of both phases, TensorBoard curves, and
the advice read from them."""

from __future__ import annotations

import keras
import numpy as np

from keras_ft.config import TrainingConfig
from keras_ft.training.decisions import Decisions

PHASES = ("head", "finetune")


class TrainingHistory:
    """Per-epoch metrics of both phases on one epoch axis.

    Attributes:
        history: like `keras.callbacks.History.history`, a dict of lists, plus
            `"epoch"` and `"phase"` (`"head"` or `"finetune"`) for each epoch.
        decisions: the `Decisions` training took from the data, kept in
            checkpoints so that a resumed run keeps them.
    """

    def __init__(self, rows: list[dict] | None = None, decisions: dict | None = None):
        """`decisions`: a checkpoint's (or run record's) `"decisions"` object."""
        self.rows = list(rows or [])
        self.decisions = Decisions.from_record(decisions)

    @property
    def fine_tuned(self) -> bool:
        """Whether phase 2 trained at least one epoch."""
        return any(row.get("phase") == "finetune" for row in self.rows)

    @property
    def history(self) -> dict[str, list]:
        keys = dict.fromkeys(key for row in self.rows for key in row)
        return {key: [row.get(key) for row in self.rows] for key in keys}

    def recorder(self, phase: str) -> keras.callbacks.Callback:
        """A callback appending each finished epoch of `phase` to `rows`."""
        rows = self.rows

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = {k: float(v) for k, v in (logs or {}).items()}
                rows.append({"epoch": epoch + 1, "phase": phase, **logs})

        return Recorder()


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` writing per-epoch summaries only.

    Steps are epochs, which `fit_two_phase` numbers continuously across both
    phases, so the head and fine-tune phases share one axis. Keras's extra
    `evaluation_*_vs_iterations` summaries are left out: they are keyed on the
    optimizer's step count, which restarts with phase 2's new optimizer.
    """

    def __init__(self, log_dir):
        super().__init__(log_dir=str(log_dir), write_graph=False, update_freq="epoch")

    def on_test_end(self, logs=None):
        # With update_freq="epoch" the base class pushes no writer at test begin;
        # all it would do here is write the iteration-keyed summaries.
        pass


def kept_epoch(rows: list[dict], config: TrainingConfig) -> dict | None:
    """The history row whose weights a phase ended with, given that phase's rows.

    With early stopping, Keras restores the weights of the epoch with the
    lowest validation loss (the first such epoch); otherwise the last epoch's stay.
    """
    if not rows:
        return None
    if config.early_stopping and all("val_loss" in row for row in rows):
        return rows[int(np.argmin([row["val_loss"] for row in rows]))]
    return rows[-1]


def advice(
    rows: list[dict], config: TrainingConfig, decisions: Decisions | None = None
) -> list[str]:
    """What the history says about the epoch budget and the fine-tuning, in plain sentences.

    Three checks, on the validation split (nothing is said without one):
    a phase stopped early (fewer epochs than its budget); a phase's validation
    loss was still at its best at its last epoch, so more epochs would likely
    help ("+N epochs": half the phase's budget, at least 1); fine-tuning ended
    with a lower validation accuracy than the phase-1 head it started from.

    Args:
        rows: `TrainingHistory.rows` of both phases.
        config: the run's `TrainingConfig`.
        decisions: `TrainingHistory.decisions`; with `fallback_to_head` or
            `fallback_to_probe`, which weights were kept.

    Returns:
        A list of messages (empty when there is nothing to say).
    """
    messages, kept = [], {}
    budgets = {"head": config.head_epochs, "finetune": config.finetune_epochs}
    planned = decisions.time_budget if decisions else None
    if planned:  # a time budget's plan: the epochs the phases were given
        budgets = {"head": planned["head_epochs"], "finetune": planned["finetune_epochs"]}
    names = {"head": "phase 1 (head)", "finetune": "phase 2 (fine-tuning)"}
    for phase in PHASES:
        ran = [row for row in rows if row["phase"] == phase]
        if not ran or "val_loss" not in ran[-1]:
            continue
        kept[phase] = kept_epoch(ran, config)
        losses = [row["val_loss"] for row in ran]
        if len(ran) < budgets[phase]:
            messages.append(
                f"{names[phase]} stopped early at epoch {ran[-1]['epoch']} ({len(ran)} of "
                f"{budgets[phase]} epochs): val_loss did not improve for "
                f"{config.early_stopping} epoch(s); kept the weights of epoch "
                f"{kept[phase]['epoch']}."
            )
        elif len(ran) > 1 and losses[-1] < min(losses[:-1]):
            more = max(1, round(budgets[phase] / 2))
            epochs = f"{more} epoch{'s' * (more > 1)}"
            option = "head_epochs" if phase == "head" else "finetune_epochs"
            messages.append(
                f"{names[phase]}: val_loss was still improving at its last epoch "
                f"({losses[-2]:.4g} -> {losses[-1]:.4g}): train longer: +{epochs} "
                f"({option}={budgets[phase] + more})."
            )
    head, tuned = kept.get("head"), kept.get("finetune")
    fallback = (decisions.fallback if decisions else None) or {}
    if fallback.get("kept") == "head":
        messages.append(
            f"fine-tuning did not lower the validation loss of the phase-1 head "
            f"({fallback['head_val_loss']:.4g} -> {fallback['finetune_val_loss']:.4g}): the "
            "head's weights were kept. Try a lower finetune_lr or unfreezing fewer layers."
        )
    elif fallback.get("kept") == "probe":
        messages.append(
            f"a logistic regression on the frozen features had a lower validation loss "
            f"({fallback['probe_val_loss']:.4g}) than fine-tuning "
            f"({fallback['finetune_val_loss']:.4g}): the model is that linear probe. With more "
            "images, or a lower finetune_lr, fine-tuning may do better."
        )
    elif head and tuned and tuned.get("val_accuracy", 1) < head.get("val_accuracy", 0):
        messages.append(
            f"fine-tuning ended below the phase-1 head: val_accuracy "
            f"{tuned['val_accuracy']:.4f} after phase 2 vs {head['val_accuracy']:.4f} after "
            "phase 1. Try a lower finetune_lr, unfreezing fewer layers, or finetune_epochs=0."
        )
    return messages
