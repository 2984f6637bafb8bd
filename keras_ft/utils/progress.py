"""What training prints: a line as each phase starts, a line per epoch, and the time left.

On a terminal Keras's progress bar stays, and a line with the overall
progress follows each epoch's bar. Anywhere else (a file, a pipe, a CI log)
the bar would be escape sequences, backspaces and carriage returns, so Keras
prints nothing and `Progress` writes one plain line per epoch instead:

    phase 1: training the head on the frozen backbone's cached features, Adam lr 0.001, 30 epochs
    epoch 1/60 overall, 12 s left in phase 1, then 30 epochs of phase 2 - phase 1 epoch 1/30 - ...
    phase 2: fine-tuning 13 backbone layers and the head, SGD lr 3e-4 momentum 0.9 cosine, 30 epochs
    epoch 31/60 overall, 1 min 20 s left - phase 2 epoch 1/30 - 2.9 s - loss: 0.4127 - ...

The time left is estimated per phase, from that phase's own epochs: phase 1
on cached features is far faster per epoch than phase 2, so phase 2 is not
guessed from it. A phase's first epoch also traces the training and validation
steps (seconds, on a small data set most of the epoch): its estimate counts
each first batch as long as the others.
"""

from __future__ import annotations

import sys
import time

import keras

from keras_ft.utils.text import format_rate

PHASE_NUMBERS = {"head": 1, "finetune": 2}


def is_terminal() -> bool:
    """Whether standard output is a terminal (where a progress bar can redraw itself)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def uses_bars(verbose) -> bool:
    """Whether `verbose` means Keras's progress bars: 1, or `"auto"` on a terminal."""
    return verbose == 1 or (verbose == "auto" and is_terminal())


def format_duration(seconds: float) -> str:
    """`"45 s"`, `"1 min 20 s"`, `"2 h 5 min"`: a duration as a person says it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, seconds = divmod(seconds, 60)
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def phase_line(
    phase: str,
    config,
    epochs: int,
    done: int = 0,
    backbone_layers: int = 0,
    cached=False,
    copies: int = 0,
) -> str:
    """The line that starts `phase`: what trains, with which optimizer and rate, how long.

    Args:
        phase: `"head"` or `"finetune"`.
        config: the phase's `TrainingConfig` (its learning rates resolved).
        epochs: the phase's epochs.
        done: those already trained (a resumed run).
        backbone_layers: phase 2: the backbone layers it trains.
        cached: phase 1: whether it trains on the frozen backbone's cached features.
        copies: phase 1: of how many augmented copies of the training images (0: of the
            images as they are).
    """
    if phase == "head":
        what = "training the head on the frozen backbone" + ("'s cached features" if cached else "")
        if copies:
            what += f" of {copies} augmented copies of the training images"
        how = f"Adam lr {format_rate(config.head_lr)}"
    else:
        if backbone_layers:
            layers = "layer" if backbone_layers == 1 else "layers"
            what = f"fine-tuning {backbone_layers} backbone {layers} and the head"
        else:
            what = "training the head (no backbone layer unfrozen)"
        how = f"SGD lr {format_rate(config.finetune_lr)} momentum {config.momentum:g}"
        if config.weight_decay:
            how += f" weight decay {format_rate(config.weight_decay)}"
        if config.finetune_schedule != "constant":
            how += f" {config.finetune_schedule}"
            if config.warmup_epochs:
                how += f" after {_epochs(config.warmup_epochs)} of warm-up"
        if config.discriminative_lr > 1:
            how += f", the lowest layer at lr / {config.discriminative_lr:g}"
    resumed = f", resuming after epoch {done} of them" if done else ""
    return f"phase {PHASE_NUMBERS[phase]}: {what}, {how}, {_epochs(epochs)}{resumed}"


def _metrics(logs: dict) -> str:
    """Keras's ` - name: value` metrics, the loss first."""
    names = sorted(logs, key=lambda name: name != "loss")
    return "".join(f" - {name}: {_number(logs[name])}" for name in names)


def _number(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.4e}"


class Progress(keras.callbacks.Callback):
    """The overall progress of a two-phase fit, one line after each epoch.

    Pass `callbacks()` to each phase's `fit`, with `verbose=keras_verbose`, and
    call `start_phase` before it.

    Args:
        plan: `(phase, first epoch, epochs)` of each phase, in order; epochs
            are numbered across both phases, from 0.
        verbose: `"auto"` (a progress bar on a terminal, else one line per
            epoch), 0 (nothing), 1 (Keras's bar) or 2 (one line per epoch).
        clock: returns the time in seconds (tests pass a fake one).
    """

    def __init__(self, plan, verbose="auto", clock=time.perf_counter):
        super().__init__()
        self.plan = [(phase, start, epochs) for phase, start, epochs in plan if epochs]
        self.total = sum(epochs for _, _, epochs in self.plan)
        self.silent = verbose == 0
        self.bars = uses_bars(verbose)
        self.keras_verbose = 1 if self.bars and not self.silent else 0
        self.clock = clock
        self.durations = {phase: [] for phase, _, _ in self.plan}
        self.first_epoch = {}  # phase: its first epoch's seconds, the tracing left out
        self.phase = None
        self._began = None
        self._batches = {"train": [], "test": []}  # the clock at each batch's start and end

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """This callback for `fit`, after Keras's progress bar when there is one (its last
        update ends the bar's line before this prints)."""
        if self.silent:
            return []
        return [keras.callbacks.ProgbarLogger(), self] if self.bars else [self]

    def start_phase(self, phase: str) -> None:
        self.phase = phase

    def on_epoch_begin(self, epoch, logs=None):
        self._began = self.clock()
        self._batches = {"train": [], "test": []}

    def on_train_batch_begin(self, batch, logs=None):
        self._batches["train"].append([self.clock()])

    def on_train_batch_end(self, batch, logs=None):
        self._batches["train"][-1].append(self.clock())

    def on_test_batch_begin(self, batch, logs=None):
        self._batches["test"].append([self.clock()])

    def on_test_batch_end(self, batch, logs=None):
        self._batches["test"][-1].append(self.clock())

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.clock() - self._began
        if not self.durations[self.phase]:
            self.first_epoch[self.phase] = seconds - self._tracing()
        self.durations[self.phase].append(seconds)
        line = f"epoch {epoch + 1}/{self.total} overall, {self._left(epoch + 1)}"
        if not self.bars:
            start, epochs = self._span(self.phase)
            took = f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)
            line += f" - phase {PHASE_NUMBERS[self.phase]} epoch {epoch + 1 - start}/{epochs}"
            line += f" - {took}{_metrics(logs or {})}"
        print(line, flush=True)

    def _span(self, phase: str) -> tuple[int, int]:
        return next((start, epochs) for name, start, epochs in self.plan if name == phase)

    def _tracing(self) -> float:
        """How much longer this epoch's first training and validation batches took than
        the others (a validation batch alone is counted as long as a training step)."""
        steps = {  # a batch that has not ended (a step that raised) is not counted
            kind: [times[1] - times[0] for times in batches if len(times) == 2]
            for kind, batches in self._batches.items()
        }
        if len(steps["train"]) < 2:
            return 0.0
        step = sum(steps["train"][1:]) / (len(steps["train"]) - 1)
        usual = {"train": step, "test": step}
        if len(steps["test"]) > 1:
            usual["test"] = sum(steps["test"][1:]) / (len(steps["test"]) - 1)
        return sum(max(0.0, times[0] - usual[kind]) for kind, times in steps.items() if times)

    def _per_epoch(self, phase: str) -> float:
        """Seconds per epoch of `phase`: the mean of its epochs after the first (which
        traces the steps) once there are such epochs, else the first's without tracing."""
        durations = self.durations[phase][1:]
        if not durations:
            return self.first_epoch[phase]
        return sum(durations) / len(durations)

    def _left(self, done: int) -> str:
        if done >= self.total:
            return "done"
        start, epochs = self._span(self.phase)
        remaining = max(0, start + epochs - done)
        later = sum(e for _, s, e in self.plan if s >= start + epochs)
        left = format_duration(remaining * self._per_epoch(self.phase))
        if not later:
            return f"{left} left"
        number, following = PHASE_NUMBERS[self.phase], PHASE_NUMBERS[self.phase] + 1
        if not remaining:
            return f"phase {number} done, {_epochs(later)} of phase {following} to go"
        return f"{left} left in phase {number}, then {_epochs(later)} of phase {following}"
