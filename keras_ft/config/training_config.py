"""`TrainingConfig`: the two phases, and which of its options `FineTuner` takes.

`CONSTRUCTOR_OPTIONS` act before training (on the build) and go to `FineTuner`;
`FIT_OPTIONS`, the rest, go to `FineTuner.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_ft.config.checks import Range, check, is_int, is_number
from keras_ft.config.options import option, options_of, validate
from keras_ft.config.parsers import (
    parse_class_weight,
    parse_duration,
    parse_list,
    parse_rate,
    parse_unfreeze,
)
from keras_ft.utils.errors import KerasFTError

SCHEDULES = ("constant", "cosine")
HEAD_INITS = ("random", "probe")
STRATEGIES = ("auto", "none", "mirrored", "multiworker", "tpu")
LR_SCALINGS = ("none", "linear")
WARMUP_NEEDS_COSINE = "0 unless finetune_schedule='cosine' (warm-up leads into the cosine decay)"


@dataclass(frozen=True)
class TrainingConfig:
    """The two phases: head on a frozen backbone, then fine-tuning with SGD."""

    head_epochs: int = option(
        10,
        help="phase 1 epochs (frozen backbone, Adam at `head_lr`).",
        valid=Range(0, integer=True),
    )
    finetune_epochs: int = option(
        10,
        help="phase 2 epochs (SGD at `finetune_lr` with `momentum`).",
        valid=Range(0, integer=True),
    )
    head_lr: float | str = option(
        1e-3,
        help='phase 1 learning rate, or `"auto"`: a learning-rate range test (`lr_find`) '
        "before phase 1 picks it.",
        valid=lambda value: Range(0.0, closed="neither")(value) or value == "auto",
        expected="a float > 0, or 'auto' (a learning-rate range test picks it)",
        parse=parse_rate,
        cli_help="a rate, or auto (range test)",
    )
    finetune_lr: float | str = option(
        1e-4,
        help='phase 2 learning rate, or `"auto"`: a range test after phase 1 picks it. '
        'Found rates are printed and kept in `run.json` under `"decisions"`; `reproduce` '
        "replays them.",
        valid=lambda value: Range(0.0, closed="neither")(value) or value == "auto",
        expected="a float > 0, or 'auto' (a learning-rate range test picks it)",
        parse=parse_rate,
        cli_help="a rate, or auto",
    )
    momentum: float = option(
        0.9, help="phase 2 SGD momentum.", valid=Range(0.0, 1.0, closed="left")
    )
    weight_decay: float = option(
        0.0,
        help="phase 2 decoupled weight decay (Keras's SGD `weight_decay`): each step shrinks "
        "every trained weight by `weight_decay` times the step's learning rate (each "
        "layer's own rate with `discriminative_lr`), before the gradient step. About PyTorch's SGD "
        "`weight_decay`, e.g. 1e-4; 0: none.",
        valid=Range(0.0),
        expected="a float >= 0, e.g. 1e-4 (0: no weight decay)",
    )
    unfreeze: str | int = option(
        "all",
        help='`"all"`, a backbone layer name to unfreeze from (e.g. `"block5_conv1"`), or the '
        "number of top backbone layers.",
        valid=lambda value: (
            (is_int(value) and value >= 1) or (isinstance(value, str) and value != "")
        ),
        expected="'all', a layer name such as 'block5_conv1', or a number of top layers >= 1",
        parse=parse_unfreeze,
        cli_help="all, a layer name to unfreeze from, or a number of top layers",
    )
    train_batchnorm: bool = option(
        False,
        help="phase 2 also trains the unfrozen backbone layers' BatchNormalization, as Keras "
        "trains it: batch statistics in training steps, moving statistics updated, scales "
        "and offsets learned. Off, they keep the pretrained values and run in inference "
        "mode, as the Keras transfer-learning guide advises.",
        cli_help="phase 2 also trains the backbone's BatchNormalization (batch statistics, "
        "moving averages, scales and offsets)",
    )
    deterministic: bool = option(
        True,
        help="turn on TensorFlow op determinism (bitwise replay).",
        flag="--no-determinism",
        cli_help="turn op determinism off (faster on some GPUs, no bitwise replay)",
        constructor=True,
    )
    feature_cache: bool = option(
        True,
        help="without augmentation, compute the frozen backbone's features once and train "
        "phase 1's head on them (much faster, same result up to float rounding).",
        cli_help="recompute the frozen backbone every phase-1 epoch (no-augment runs)",
    )
    jit_compile: bool = option(
        False,
        help="compile training steps with XLA (faster on GPUs); needs `deterministic=False`.",
        cli_help="XLA-compile training steps (needs --no-determinism)",
    )
    class_weight: str | dict[str, float] | None = option(
        None,
        help='`None`, `"balanced"` (scikit-learn\'s rule: rarer classes weigh more), or '
        "`{class name: weight}` (unnamed classes weigh 1).",
        valid=lambda value: (
            value is None
            or value == "balanced"
            or (isinstance(value, dict) and all(is_number(w) and w > 0 for w in value.values()))
        ),
        expected="None, 'balanced', or a dict mapping class names to positive weights",
        parse=parse_class_weight,
        cli_help="'balanced' or CLASS=WEIGHT pairs, e.g. cat=2,dog=1",
    )
    label_smoothing: float = option(
        0.0,
        help="e.g. 0.1: targets of 0.9 and 0.1 / (classes - 1) rather than 1 and 0.",
        valid=Range(0.0, 1.0, closed="left"),
        expected="a float in [0, 1), e.g. 0.1",
    )
    finetune_schedule: str = option(
        "constant",
        help='phase 2 learning rate: `"constant"`, or `"cosine"` decay to 0 over the phase.',
        choices=SCHEDULES,
    )
    warmup_epochs: int = option(
        0,
        help='with `"cosine"`, epochs of linear warm-up from 0 to `finetune_lr` first.',
        valid=Range(0, integer=True),
    )
    early_stopping: int | None = option(
        None,
        help="patience in epochs: stop a phase when the validation loss has not improved for "
        "that long, and keep the best weights.",
        valid=lambda value: value is None or Range(1, integer=True)(value),
        expected="None or a patience in epochs >= 1",
        parse=int,
        metavar="PATIENCE",
        cli_help="stop a phase after PATIENCE epochs without a better val_loss",
    )
    time_budget: float | None = option(
        None,
        help="seconds the whole `fit` may take. Before phase 1, a few training steps of each "
        "phase are timed (then undone) and the epochs of both phases planned from them: "
        "shortened in the same proportion where the configured ones would not end in time, "
        "never lengthened. The plan is printed and kept in `run.json` under `decisions`; "
        "`reproduce` replays it. None: the epochs as configured.",
        valid=lambda value: value is None or (is_number(value) and value > 0),
        expected="None or a number of seconds > 0",
        parse=parse_duration,
        metavar="DURATION",
        cli_help="plan both phases' epochs to end within DURATION (e.g. 90s, 5m, 1.5h), from "
        "the time of a few measured steps",
    )
    discriminative_lr: float = option(
        1.0,
        help="phase 2's rate for the lowest unfrozen backbone layer is `finetune_lr / "
        "discriminative_lr`, rising geometrically layer by layer to `finetune_lr` at the top "
        "and in the head (`keras_ft.training.optimizers.layer_multipliers`). 1: one rate for all.",
        valid=Range(1.0),
        expected="a float >= 1: how many times lower the lowest unfrozen layer's rate is than "
        "finetune_lr (1: one rate for all)",
        fix="fastai's slice(lr / 100, lr) is 100.",
        metavar="RATIO",
        cli_help="phase 2: the lowest unfrozen layer trains at --finetune-lr / RATIO, rising "
        "layer by layer to --finetune-lr at the top",
    )
    gradual_unfreeze: int = option(
        0,
        help="ULMFiT's gradual unfreezing (Howard and Ruder 2018) in phase 2: the unfrozen "
        "backbone layers that have weights are split, in depth order, into this many groups "
        "of about equal size (`keras_ft.training.optimizers.unfreeze_groups`); the head and "
        "the top group train from phase 2's first epoch, and at each following epoch the next "
        "group below joins, so that all train from epoch `gradual_unfreeze` of phase 2. A layer "
        "waiting its turn keeps its weights (no step, no weight decay; its gradient is "
        "still computed). 0 or 1: all at once.",
        valid=Range(0, integer=True),
        expected="an int >= 0: how many groups of backbone layers join phase 2, one epoch "
        "apart (0: all at once)",
        fix="ULMFiT adds one layer group per epoch; for VGG16 from block 1, 5 is a group "
        "per block.",
        metavar="GROUPS",
        cli_help="phase 2: unfreeze the backbone in GROUPS groups, the top one first and one "
        "more each epoch (ULMFiT's gradual unfreezing)",
    )
    head_augment: bool = option(
        True,
        help="False trains phase 1 on the features of the unaugmented training images, "
        "computed once (`feature_cache`), even when the data augments; phase 2 still sees "
        "augmented images.",
        cli_help="phase 1 trains on the unaugmented images' features, computed once; phase 2 "
        "still augments",
    )
    head_copies: int = option(
        0,
        help="phase 1 on augmented images: compute the frozen backbone's features of this "
        "many augmented copies of the training images once (copy k augmented as epoch k "
        "augments), and train epoch e's head on copy e mod `head_copies`, instead of running "
        "the backbone on every batch of every epoch; the copies' features are held in memory. "
        "0: the backbone runs on every batch. Moot where phase 1 does not augment (its "
        "features are then computed once).",
        valid=Range(0, integer=True),
        expected="an int >= 0: augmented copies of the training images whose features "
        "phase 1 computes once (0: none, the backbone runs every epoch)",
        fix="8 copies cost 8 passes of the backbone over the training images, where 60 "
        "epochs cost 60.",
        metavar="COPIES",
        cli_help="phase 1 trains on the frozen features of COPIES augmented copies of the "
        "training images, computed once (0: the backbone runs on every batch)",
    )
    head_init: str = option(
        "random",
        help='how the head starts: `"random"` (Keras\'s initialisers), or `"probe"`: as the '
        "linear probe (a logistic regression on the frozen backbone's features of the "
        "training images, C by cross-validation), which phase 1, if any, and phase 2 then "
        "train on: linear probing, then fine-tuning (LP-FT, Kumar et al. 2022). Needs a head "
        "without `dense_units`.",
        cli_help="start the head as the linear probe on the frozen features (LP-FT)",
        choices=HEAD_INITS,
    )
    fallback_to_head: bool = option(
        False,
        help="after phase 2, restore the phase-1 head's weights if fine-tuning did not lower "
        "the validation loss (needs a validation split; recorded in `run.json` under "
        "`decisions`).",
        cli_help="keep the phase-1 head's weights if fine-tuning does not lower the "
        "validation loss",
    )
    fallback_to_probe: bool = option(
        False,
        help="after phase 2, keep as the model the linear probe (a logistic regression on "
        "the frozen backbone's features, folded into the head's last layer, on the backbone "
        "phase 2 started from) if its validation loss is lower than the fine-tuned model's "
        "(and, with `fallback_to_head`, the phase-1 head's). Needs a validation split and a "
        "head without `dense_units`; recorded in `run.json` under `decisions`.",
        cli_help="keep the linear probe on the frozen features as the model if its "
        "validation loss is lower than fine-tuning's",
    )
    fallback_to_mixes: tuple[float, ...] = option(
        (),
        help="after phase 2, also compete in the fallback: for each fraction `a`, the weights "
        "`a * fine-tuned + (1 - a) * those phase 2 started from` (a weight-space ensemble of "
        "the fine-tuned model and the phase-1 head on the frozen backbone: WiSE-FT, Wortsman "
        "et al. 2022), kept if its validation loss is the lowest. Needs a validation split; "
        "recorded in `run.json` under `decisions`.",
        convert=lambda value: tuple(value) if isinstance(value, (tuple, list)) else value,
        valid=lambda value: (
            isinstance(value, tuple) and all(is_number(a) and 0 < a < 1 for a in value)
        ),
        expected="a sequence of fractions strictly between 0 and 1, e.g. (0.25, 0.5, 0.75)",
        parse=parse_list(float, "fractions such as 0.25,0.5,0.75"),
        metavar="FRACTIONS",
        cli_help="also keep a*fine-tuned + (1-a)*phase-2-start weights if its validation loss "
        "is lowest, for each comma-separated a, e.g. 0.25,0.5,0.75",
    )
    refit_probe: bool = option(
        False,
        help="when `fallback_to_probe` keeps the linear probe, fit it again on the training "
        "and validation images together (C again by cross-validation) once validation has "
        "chosen it, as a probe is usually fitted; `run.json` keeps the validation figures "
        "of the probe fitted without them.",
        cli_help="refit a kept linear probe on the training and validation images together",
    )
    strategy: str = option(
        "auto",
        help='how to spread training over devices, with `tf.distribute`: `"auto"` (all local '
        'GPUs when there are several, else one device), `"none"`, `"mirrored"` (all local '
        'GPUs), `"multiworker"` (the cluster in `TF_CONFIG`; create the FineTuner before any '
        'other TensorFlow work) or `"tpu"`. See `keras_ft.training.distribute`. The data\'s '
        "`batch_size` is then per replica.",
        choices=STRATEGIES,
        fix="'auto' uses all local GPUs when there are several.",
        cli_help="tf.distribute strategy: auto (all local GPUs if several), none, mirrored, "
        "multiworker (the cluster in TF_CONFIG) or tpu; --batch-size is then per replica",
        constructor=True,
    )
    lr_scaling: str = option(
        "none",
        help="under a strategy with N replicas the global batch is N times the data's "
        '`batch_size`: `"none"` keeps `head_lr` and `finetune_lr`, `"linear"` multiplies '
        "both by N.",
        choices=LR_SCALINGS,
        expected=f"one of {LR_SCALINGS} ('linear' multiplies the learning rates by the replicas)",
        cli_help="with N replicas: keep the learning rates (none) or multiply them by N (linear)",
    )

    def __post_init__(self):
        validate(self)
        check(
            self.time_budget is None or self.strategy != "multiworker",
            "time_budget",
            "None with strategy='multiworker' (each worker would time its own steps and "
            "could plan other epochs)",
            self.time_budget,
            "Pass head_epochs and finetune_epochs instead.",
        )
        check(
            self.head_epochs + self.finetune_epochs > 0,
            "head_epochs/finetune_epochs",
            "at least one epoch in total",
            0,
        )
        check(
            self.warmup_epochs <= self.finetune_epochs,
            "warmup_epochs",
            f"an int from 0 to finetune_epochs ({self.finetune_epochs})",
            self.warmup_epochs,
        )
        check(
            self.gradual_unfreeze <= max(1, self.finetune_epochs),
            "gradual_unfreeze",
            f"an int from 0 to finetune_epochs ({self.finetune_epochs}): one group joins "
            "phase 2 per epoch, and each must have its turn",
            self.gradual_unfreeze,
        )
        check(
            self.warmup_epochs == 0 or self.finetune_schedule == "cosine",
            "warmup_epochs",
            WARMUP_NEEDS_COSINE,
            self.warmup_epochs,
            "Pass finetune_schedule='cosine' too, or warmup_epochs=0.",
        )
        check(
            self.head_augment or self.feature_cache,
            "head_augment",
            "True unless feature_cache=True (phase 1 then trains on the features of the "
            "unaugmented images, computed once)",
            self.head_augment,
        )
        check(
            not self.head_copies or (self.head_augment and self.feature_cache),
            "head_copies",
            "0 unless head_augment=True and feature_cache=True (the copies are augmented "
            "features computed once)",
            self.head_copies,
        )
        check(
            self.fallback_to_probe or not self.refit_probe,
            "refit_probe",
            "False unless fallback_to_probe=True (it refits the probe that fallback kept)",
            self.refit_probe,
        )
        if self.jit_compile and self.deterministic:
            raise KerasFTError(
                "`jit_compile=True` conflicts with op determinism: XLA has no deterministic "
                "kernels for some ops and fails mid-training. Pass deterministic=False "
                "(--no-determinism) to use XLA, or leave jit_compile off for bitwise replay."
            )


CONSTRUCTOR_OPTIONS = tuple(n for n, o in options_of(TrainingConfig).items() if o.constructor)
FIT_OPTIONS = tuple(n for n in options_of(TrainingConfig) if n not in CONSTRUCTOR_OPTIONS)
