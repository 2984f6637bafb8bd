"""The `keras-ft` command: parses arguments and calls the library, nothing more.

Exit codes: 0 success; 2 bad usage or bad input (one message, no traceback);
1 an unexpected failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

from keras_ft.config import (
    FIT_OPTIONS,
    DataConfig,
    ModelConfig,
    Option,
    TrainingConfig,
    defaults_of,
    options_of,
    parse_unfreeze,
    parse_weights,
)
from keras_ft.config.recipe import RECIPES
from keras_ft.utils.quiet import import_tensorflow, show_tensorflow_logs, tensorflow_may_load
from keras_ft.utils.text import close_matches, did_you_mean, one_of, printable

CONFIGS = (DataConfig, ModelConfig, TrainingConfig)

# `train`'s argument groups, in --help's order; a config field's group is its config's
# (data, model, training) unless named here.
GROUPS = ("data", "augmentation", "model", "training", "recipe", "devices", "output and run")
FIELD_GROUPS = {
    **dict.fromkeys(
        ("augment", "flip", "quarter_turns", "rotation", "zoom", "contrast", "translation"),
        "augmentation",
    ),
    "head_augment": "augmentation",
    **dict.fromkeys(
        ("fallback_to_head", "fallback_to_probe", "fallback_to_mixes", "refit_probe"), "recipe"
    ),
    **dict.fromkeys(("strategy", "lr_scaling"), "devices"),
}
CONFIG_GROUPS = {DataConfig: "data", ModelConfig: "model", TrainingConfig: "training"}

# Flags people bring from one-phase trainers: training has two phases, each with its own.
TWO_PHASES = {
    "--epochs": ("--head-epochs", "--finetune-epochs"),
    "--lr": ("--head-lr", "--finetune-lr"),
    "--learning-rate": ("--head-lr", "--finetune-lr"),
}


class Parser(argparse.ArgumentParser):
    """argparse's parser with Keras-style usage errors: a mistyped flag, command or
    choice gets a "did you mean", and an unknown flag is refused under the usage of the
    command it was given to (argparse's own says `keras-ft`'s)."""

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        command = _command_parser(self, parsed)
        if extras:
            command.error(_unrecognized(extras, command))
        check = getattr(parsed, "check_arguments", None)
        if check is not None:
            message = check(parsed)
            if message:
                command.error(message)
        return parsed

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            hint = did_you_mean(str(value), [str(choice) for choice in action.choices])
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{error.message}.{hint}") from None


def _command_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The sub-command's parser that `args` were parsed by (else `parser`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, action.dest, None), parser)
    return parser


def _unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments" message, with the flags each unknown one may mean."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    hints = {}
    for given in dict.fromkeys(a.split("=")[0] for a in extras if a.startswith("--")):
        meant = [flag for flag in TWO_PHASES.get(given, ()) if flag in flags]
        meant = meant or close_matches(given, flags)
        if meant:
            hints[given] = one_of(meant, quote=False)
    message = f"unrecognized arguments: {' '.join(extras)}."
    if len(hints) == 1:
        message += f" Did you mean {next(iter(hints.values()))}?"
    elif hints:
        message += " Did you mean " + "; ".join(f"{a} -> {b}" for a, b in hints.items()) + "?"
    if set(hints) & set(TWO_PHASES):
        message += " Training has two phases: the head on the frozen backbone, then fine-tuning."
    return message


def _version() -> str:
    """keras_ft's installed version (its own `__version__` when not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("keras-ft")
    except importlib.metadata.PackageNotFoundError:
        from keras_ft.utils.version import __version__

        return __version__


def _group(p: argparse.ArgumentParser, title: str):
    """`p`'s argument group `title`, made (with all of `GROUPS` before it) if need be."""
    groups = {group.title: group for group in p._action_groups}
    if title not in groups and title in GROUPS:
        for name in GROUPS:
            if name not in groups:
                groups[name] = p.add_argument_group(name)
    return groups.get(title) or p.add_argument_group(title)


_PROBE_HELP = (
    "keep a linear probe as the model: a logistic regression on the frozen, pooled "
    "features, folded into one Dense layer; an ordinary run directory (load, predict, "
    "export, reproduce). The epoch, learning-rate, augmentation and head flags are ignored."
)


def _add_train(commands, name: str = "train", head: str = "dense") -> None:
    # No abbreviated flags: the recipe keeps the training flags named in full (`_given`).
    if head == "linear":
        p = commands.add_parser(
            name, help=_PROBE_HELP.split(";")[0], description=_PROBE_HELP, allow_abbrev=False
        )
    else:
        p = commands.add_parser(
            name, help="fine-tune a backbone on an image folder", allow_abbrev=False
        )
    _add_run_arguments(p, "run directory to write", exclude=(), metavar="RUN_DIR")
    run = _group(p, "output and run")
    run.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run from its last checkpoint in --output",
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    _add_signing_key(run, "sign run.json with the key in FILE (default: $KERAS_FT_SIGNING_KEY)")
    p.set_defaults(func=train, head=head)


def _add_signing_key(p, text: str) -> None:
    p.add_argument("--signing-key-file", metavar="FILE", help=text)


_VERIFY_HELP = (
    "refuse the run unless run.json is signed with the key in FILE (default: $KERAS_FT_SIGNING_KEY)"
)


# Options `train` alone takes: tune's trials and lr-find's sweep run on one device.
TRAIN_ONLY = ("strategy", "lr_scaling")


def _add_run_arguments(p, output_help: str, exclude=TRAIN_ONLY, metavar="OUTPUT") -> None:
    """The flags `train`, `tune` and `lr-find` share: one per config field, and --output,
    in argument groups (`GROUPS`)."""
    p.usage = f"%(prog)s DATA_DIR --output {metavar} [options]"
    _group(p, "data").add_argument(
        "data_dir", metavar="DATA_DIR", help="training folder: DATA_DIR/<class>/<image>"
    )
    _group(p, "output and run").add_argument(
        "--output", required=True, metavar=metavar, help=output_help
    )
    recipe = _group(p, "recipe")
    recipe.add_argument(
        "--recipe",
        choices=("auto", "none"),
        default="auto",
        help="auto (train's default): settings that adapt to the data for every flag left "
        "at its default (--fallback-to-head --fallback-to-probe --refit-probe, with a "
        "validation split; --head-epochs and --finetune-epochs 60 below 150 training images, "
        "30 from 150, 10 and 15 from 500; from 150 --finetune-lr 3e-4, from 500 1e-3, "
        "--finetune-schedule cosine --warmup-epochs 1); what it set is printed and kept in "
        "run.json. "
        "none (tune's default): the flags as given, defaults included",
    )
    seen = set(exclude)
    for config in CONFIGS:
        for name, declared in options_of(config).items():
            if name not in seen and declared.flag != "":
                group = _group(p, FIELD_GROUPS.get(name, CONFIG_GROUPS[config]))
                _add_option(group, name, declared, config.__dataclass_fields__[name].default)
                seen.add(name)
    run = _group(p, "output and run")
    run.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="write no TensorBoard logs (default: RUN_DIR/logs)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def _cli_default(declared: Option, default):
    """The value a config field's flag stores when it is not given."""
    return default if declared.cli_default == "field" else declared.cli_default


def _flags(name: str, declared: Option, default) -> tuple[str, ...]:
    """The flags of config field `name` (whose field default is `default`)."""
    if declared.switches:
        return tuple(flag for flag, _, _ in declared.switches)
    prefix = "--no-" if _cli_default(declared, default) is True else "--"
    return (declared.flag or f"{prefix}{name.replace('_', '-')}",)


def _given(args) -> dict:
    """`fit`'s training options whose flags the command line names (`args.argv`): the
    recipe keeps them, even at the default's value."""
    declared, defaults = options_of(TrainingConfig), defaults_of(TrainingConfig)
    named = {a.split("=")[0] for a in args.argv}  # `--flag value` or `--flag=value`
    return {
        name: getattr(args, name)
        for name in FIT_OPTIONS
        if named & set(_flags(name, declared[name], defaults[name]))
    }


# The options `--recipe auto` sets when they are not given, at any size of the data.
AUTO_SETS = {name for n in (0, 10**9) for name in RECIPES["auto"].settings(n)}


def _add_option(p, name: str, declared: Option, default) -> None:
    """The flag of config field `name`, from its `Option`: it stores into `args.<name>`."""
    flag = _flags(name, declared, default)[0]
    default = _cli_default(declared, default)
    text = declared.cli_help or re.sub(r'`"?([^`"]*)"?`', r"\1", declared.help.rstrip("."))
    text = text.replace("%", "%%")  # argparse formats help with %
    if declared.switches:  # mutually exclusive flags, one value each
        group = p.add_mutually_exclusive_group()
        for flag, value, switch_help in declared.switches:
            group.add_argument(flag, dest=name, action="store_const", const=value, help=switch_help)
        p.set_defaults(**{name: default})
    elif isinstance(default, bool):
        action = "store_false" if default else "store_true"
        if name in AUTO_SETS:
            text += " (--recipe auto turns it on unless it cannot work, e.g. without validation)"
        p.add_argument(flag, dest=name, action=action, help=text)
    else:
        if default is not None and "default" not in text:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            shown = shown if shown != "" else "none"
            text += (
                f" (default: set from the data by --recipe auto, {shown} with --recipe none)"
                if name in AUTO_SETS
                else f" (default: {shown})"
            )
        choices = [c for c in declared.choices if c is not None] if declared.choices else None
        p.add_argument(
            flag,
            dest=name,
            type=declared.parse,
            choices=choices,
            default=default,
            metavar=declared.metavar,
            help=text,
        )


def _options(args, config) -> dict:
    """`config`'s fields that the command line set (every field with a flag, given or not)."""
    return {name: getattr(args, name) for name in options_of(config) if hasattr(args, name)}


def _add_tune(commands) -> None:
    p = commands.add_parser(
        "tune",
        help="search fine-tuning settings with KerasTuner; keep the best run",
        description=(
            "Search the learning rates, unfreeze point, dropout, head width and augmentation "
            "strength; each trial is a whole two-phase fit scored by validation accuracy. "
            "Writes OUTPUT/trials.csv, trials.json, search.json and OUTPUT/best (a run "
            "directory). A training flag for a searched setting (--head-lr, --finetune-lr, "
            "--unfreeze, --dropout, --dense-units) fixes it instead of searching it."
        ),
    )
    _add_run_arguments(p, "search directory to write (the best run goes to OUTPUT/best)")
    # Unset training flags for searched settings mean "search it"; a given one fixes it.
    p.set_defaults(head_lr=None, finetune_lr=None, unfreeze=None, dropout=None, dense_units=None)
    p.set_defaults(recipe="none")  # a trial trains with the settings drawn for it
    search = _group(p, "search")
    search.add_argument("--trials", type=int, default=10, help="settings to try (default 10)")
    search.add_argument("--search", default="random", help="random (default), bayesian or grid")
    search.add_argument(
        "--grid-points", type=int, default=3, help="values per range for grid search"
    )
    for flag, default in (
        ("--head-lr-range", "1e-4 1e-2"),
        ("--finetune-lr-range", "1e-5 1e-3"),
        ("--dropout-range", "0 0.5"),
        ("--augment-range", "0 2, a factor on --rotation/--zoom/--contrast"),
    ):
        search.add_argument(
            flag, type=float, nargs=2, metavar=("LOW", "HIGH"), help=f"default {default}"
        )
    search.add_argument(
        "--unfreeze-choices",
        type=parse_unfreeze,
        nargs="*",
        metavar="CHOICE",
        help="all, layer names, numbers of top layers (default: the backbone's suggestion, all)",
    )
    search.add_argument(
        "--dense-units-choices",
        type=int,
        nargs="*",
        metavar="UNITS",
        help="head hidden layer widths, 0 for none (default 0 128 256)",
    )
    _group(p, "output and run").add_argument(
        "--quiet", action="store_true", help="no trial summaries or progress lines"
    )
    p.set_defaults(func=tune)


TTA_HELP = (
    "test-time augmentation: average over the image, two shifted copies and, if the run "
    "trained with flips or quarter turns, its mirror image or its turns (3-7x the compute)"
)


def _add_rank(commands) -> None:
    p = commands.add_parser(
        "rank",
        help="score backbones (or one backbone's layers) from frozen features, before training",
        description=(
            "For each backbone, or with --layers each layer of one backbone, compute the "
            "frozen features of DATA_DIR once and score them: LogME, H-score and a linear "
            "probe's validation accuracy. Prints the table ranked by LogME and a "
            "recommendation; writes rank.json, rank.csv and rank.png into --output."
        ),
    )
    p.add_argument("data_dir", help="training folder: DATA_DIR/<class>/<image>")
    p.add_argument(
        "--backbones",
        nargs="+",
        default=["vgg16"],
        metavar="NAME[=WEIGHTS]",
        help="registry names; NAME=WEIGHTS (a path or none) overrides --weights for one",
    )
    p.add_argument(
        "--weights",
        type=parse_weights,
        default="imagenet",
        help="imagenet, none, or a weights path",
    )
    p.add_argument("--image-size", type=int, help="input size in px (default: the backbone's)")
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="auto|all|NAME",
        help="rank the layers of one backbone: auto (each stage's output), all, or names",
    )
    p.add_argument("--pooling", default="avg", help="avg, max, avgmax or flatten (as the head)")
    p.add_argument("--validation-split", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", help="folder for rank.json, rank.csv and rank.png")
    p.add_argument("--quiet", action="store_true", help="only the table")
    p.set_defaults(func=rank)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="keras-ft", description="Transfer learning on image folders with Keras 3.")
    version = f"%(prog)s {_version()}"
    parser.add_argument("--version", action="version", version=version, help="print it and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_train(commands, "probe", head="linear")
    _add_tune(commands)
    p = commands.add_parser("evaluate", help="evaluate a run on a held-out folder")
    p.add_argument("run_dir")
    p.add_argument("data_dir")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    _add_signing_key(p, _VERIFY_HELP)
    p.set_defaults(func=evaluate)
    p = commands.add_parser("predict", help="predict images; one JSON object per line")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    _add_signing_key(p, _VERIFY_HELP)
    p.set_defaults(func=predict)
    _add_export(commands)
    p = commands.add_parser(
        "explain",
        help="Grad-CAM: one PNG per image, showing where the model looked",
        description=(
            "Write OUTPUT/<image name>.png for each image: the image, the Grad-CAM heatmap of "
            "its top-1 class over it (on the backbone's last convolutional feature map), and "
            "the top-3 labels with their probabilities. Needs matplotlib."
        ),
    )
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--output", required=True, help="folder for the PNG files")
    _add_signing_key(p, _VERIFY_HELP)
    p.set_defaults(func=explain)
    p = commands.add_parser("reproduce", help="re-train a run from its record, compare weights")
    p.add_argument("run_dir")
    p.add_argument("--data", help="training folder, if it moved since the run")
    p.add_argument("--test-dir", help="held-out folder, if it moved since the run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_signing_key(p, _VERIFY_HELP)
    p.set_defaults(func=reproduce)
    p = commands.add_parser("scan", help="check a data set before training")
    p.add_argument("data_dir", help="training folder: DATA_DIR/<class>/<image>")
    p.add_argument("--test-dir", help="held-out folder: also checked for leakage from DATA_DIR")
    p.add_argument("--no-cache", action="store_true", help="decode every file again")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=scan)
    _add_lr_find(commands)
    _add_rank(commands)
    p = commands.add_parser("backbones", help="list the backbones that can be used")
    p.set_defaults(func=backbones)
    for command in commands.choices.values():
        titles = {group.title for group in command._action_groups}
        where = _group(command, "output and run") if "output and run" in titles else command
        where.add_argument(
            "--verbose", action="store_true", help="show TensorFlow's own log lines too"
        )
    return parser


def _add_export(commands) -> None:
    from keras_ft.runs.deploy import FORMATS, QUANTIZATIONS

    p = commands.add_parser(
        "export",
        help="export a run for TF Serving (default), a phone (litert) or ONNX, checked for parity",
        description=(
            "saved_model: copy the run's SavedModel to OUTPUT/<version>/ for TF Serving. "
            "litert, onnx: write OUTPUT/model.tflite or model.onnx, labels.txt and "
            "export.json, after running the file in its own runtime on the run's test images "
            "and comparing it with the run's model (exit 1 if a parity target is missed; the "
            "files are kept for inspection)."
        ),
    )
    p.usage = "%(prog)s RUN_DIR --output OUTPUT [options]"
    p.add_argument("run_dir", help="the run directory to export")
    p.add_argument(
        "output_positional",
        nargs="?",
        metavar="OUTPUT",
        help="deprecated: pass --output (still accepted)",
    )
    p.add_argument(
        "--output",
        metavar="OUTPUT",
        help="saved_model: the TF Serving model base path; otherwise a new directory",
    )
    p.add_argument("--format", choices=FORMATS, default="saved_model")
    p.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="litert: none (float32), float16, dynamic (int8 weights) or int8 (full-integer, "
        "uint8 pixels in, calibrated on training images)",
    )
    p.add_argument("--version", type=int, help="saved_model: version number (default: next free)")
    p.add_argument("--test-dir", help="held-out folder for the parity check (default: the run's)")
    p.add_argument(
        "--calibration-dir",
        help="int8: folder of <class>/<image> to calibrate on (default: the run's training folder)",
    )
    p.add_argument(
        "--calibration-images", type=int, default=200, help="int8: images to calibrate on"
    )
    p.add_argument(
        "--max-images", type=int, default=500, help="parity: at most this many test images"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the image samples")
    _add_signing_key(p, _VERIFY_HELP)
    p.set_defaults(func=export, check_arguments=_export_output)


def _export_output(args) -> str | None:
    """Take export's output from --output, or from the deprecated positional (saying so);
    the usage error when there is neither, or both."""
    if args.output is not None and args.output_positional is not None:
        return "pass the output once: --output OUTPUT (the positional OUTPUT is deprecated)"
    if args.output is None and args.output_positional is None:
        return "the following arguments are required: --output"
    if args.output is None:
        print(
            "note: the positional OUTPUT is deprecated; pass --output OUTPUT, as every "
            "command takes its output.",
            file=sys.stderr,
        )
        args.output = args.output_positional
    return None


def _add_lr_find(commands) -> None:
    p = commands.add_parser(
        "lr-find",
        help="learning-rate range test: plot loss against learning rate, suggest one",
        description=(
            "Train for up to --steps batches while the learning rate grows exponentially "
            "from --start-lr to --end-lr, plot the loss against it (--output PNG) and print a "
            "suggestion: a tenth of the rate at the lowest smoothed loss. --phase finetune "
            "trains the head first (--head-epochs at --head-lr). Takes train's flags."
        ),
    )
    _add_run_arguments(p, "PNG file to write the plot to", metavar="PNG")
    sweep = _group(p, "range test")
    sweep.add_argument("--phase", choices=("head", "finetune"), default="head")
    sweep.add_argument("--steps", type=int, default=200, help="at most this many batches")
    sweep.add_argument("--start-lr", type=float, default=1e-7)
    sweep.add_argument("--end-lr", type=float, default=10.0)
    _group(p, "output and run").add_argument(
        "--quiet", action="store_true", help="no progress lines or bars"
    )
    p.set_defaults(func=lr_find)


def lr_find(args) -> int:
    from keras_ft.runs.output import check_output_file

    data_dirs = (args.data_dir, args.test_dir)
    output = check_output_file(args.output, ".png", data_dirs, args.overwrite)
    spec, training = _check_run(args, strategy="none")
    _load_tensorflow(args)
    tuner = _fine_tuner(args, training)
    data = _image_folder(args, spec)
    result = tuner.lr_find(
        data,
        phase=args.phase,
        steps=args.steps,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        verbose=0 if args.quiet else "auto",
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    result.plot(output)
    name = "--head-lr" if args.phase == "head" else "--finetune-lr"
    last = result.learning_rates[-1]
    print(f"swept {len(result.losses)} steps, learning rate {args.start_lr:g} to {last:.3g}")
    print(f"steepest descent: {result.steepest:.3g}")
    print(f"suggested {name}: {result.suggestion:.3g} (a tenth of the rate at the lowest loss)")
    print(printable(f"plot: {args.output}"))
    return 0


# Commands that never need TensorFlow: they start in a fraction of a second.
WITHOUT_TENSORFLOW = ("scan", "backbones")
# Commands that check their arguments, paths and folders first, then load TensorFlow
# (`_load_tensorflow`): a mistake is refused in a fraction of a second.
CHECKS_FIRST = ("train", "probe", "tune", "lr-find")


def _check_paths(args) -> None:
    """Refuse a run directory or a data folder that is not there, before TensorFlow loads."""
    from keras_ft.utils.errors import KerasFTError
    from keras_ft.utils.text import printable

    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None and not (Path(run_dir) / "run.json").is_file():
        left = list(Path(run_dir).parent.glob(f".{Path(run_dir).name}.old-*"))
        if not left:  # else `load` says where a killed save moved the previous run
            raise KerasFTError(
                f"'{printable(str(run_dir))}' is not a keras_ft run directory (it holds no "
                "run.json). Pass a directory written by `keras-ft train --output` or "
                "`FineTuner.save`."
            )
    data_dir = getattr(args, "data_dir", None)
    if args.command in ("evaluate", "rank") and not Path(data_dir).is_dir():
        raise KerasFTError(
            f"Data directory '{printable(str(data_dir))}' does not exist or is not a directory. "
            "Pass a folder that holds one sub-folder per class."
        )


def _load_tensorflow(args) -> None:
    """Import TensorFlow and Keras, their log lines kept out of the output unless --verbose.

    TensorFlow's C++ side writes a few lines while it loads, before its log
    level applies (oneDNN, CUDA, CPU features): standard error is pointed at
    /dev/null for the import alone. Later messages below ERROR are filtered.
    """
    import logging

    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import_tensorflow(quietly=not args.verbose)


def _check_run(args, training: bool = True, searched=(), **fixed):
    """Every check of a training command's arguments that needs no TensorFlow, so that a
    mistake is refused at once: the backbone's name, the data, model and training options
    (`fixed` replaces training options; without `training` they are left to the search,
    as are the model options named in `searched`), the image size and weights file for
    the backbone, and the folders' layout (the images themselves are scanned later).

    Returns:
        (the backbone's `BackboneSpec`, the `TrainingConfig`, or None without `training`).
    """
    from keras_ft.config import checked
    from keras_ft.data.scan import list_classes
    from keras_ft.models.backbones import get_backbone
    from keras_ft.utils.errors import KerasFTError

    with tensorflow_may_load(quietly=not args.verbose):  # a backbone plugin may import it
        spec = get_backbone(args.backbone)
    image_size = args.image_size or spec.default_size
    data = DataConfig(
        directory=args.data_dir, **{**_options(args, DataConfig), "image_size": image_size}
    )
    declared = options_of(ModelConfig)
    for name, value in _options(args, ModelConfig).items():
        if name != "image_size" and name not in searched:
            checked(name, declared[name], value)
    config = _training(args, **fixed) if training else None
    spec.check_build(data.image_size, args.weights)
    classes = list_classes(args.data_dir)
    if len(classes) < 2:
        raise KerasFTError(
            f"Data directory '{args.data_dir}' has a single class {list(classes)}. "
            "A classifier needs at least two class sub-folders."
        )
    if args.test_dir is not None:
        list_classes(args.test_dir)
    return spec, config


def _fine_tuner(args, training):
    """The `FineTuner` that `train` and `lr-find` build: the model flags and `training`."""
    from keras_ft.task.finetuner import FineTuner

    return FineTuner.from_configs(_options(args, ModelConfig), training)


def _training(args, **fixed):
    """The training flags (and `fixed` values) as a `TrainingConfig`: all checked at once."""
    return TrainingConfig(**{**_options(args, TrainingConfig), **fixed})


def _image_folder(args, spec):
    """The `ImageFolder` that `train`, `tune` and `lr-find` read, from the data flags."""
    from keras_ft.data.folder import ImageFolder

    options = {**_options(args, DataConfig), "image_size": args.image_size or spec.default_size}
    return ImageFolder(args.data_dir, **options, quiet=args.quiet)


def _fit_arguments(args) -> dict:
    """The `FineTuner.fit` arguments that are not training options: how to run, not what."""
    return dict(
        recipe=None if args.recipe == "none" else args.recipe,
        tensorboard_dir=None if args.no_tensorboard else "auto",
        verbose=0 if args.quiet else "auto",
    )


# Strategies run in one process, which is the chief: it may check --output before TensorFlow.
ONE_PROCESS = ("auto", "none", "mirrored")


def train(args) -> int:
    from keras_ft.runs.output import OutputLock, check_output

    key = _key(args)  # a bad key file is refused before any training
    spec, training = _check_run(args)  # every flag and folder checked before anything runs
    checked_output = None
    if args.strategy in ONE_PROCESS:
        data_dirs = (args.data_dir, args.test_dir)
        checked_output = check_output(args.output, data_dirs, args.overwrite, args.resume)
    _load_tensorflow(args)
    from keras_ft.runs.evaluation import format_metrics
    from keras_ft.runs.manifest import checkpoint_dir
    from keras_ft.runs.reproducibility import weights_sha256

    # First: a multi-worker strategy joins its cluster before TensorFlow runs anything.
    tuner = _fine_tuner(args, training)
    distribution = tuner.distribution
    lock = contextlib.nullcontext()
    if checked_output is not None:
        output, state = checked_output
        lock = OutputLock(output)
    elif distribution.is_chief or args.resume:  # other workers leave --output alone
        output, state = check_output(
            args.output, (args.data_dir, args.test_dir), args.overwrite, args.resume
        )
        if distribution.is_chief:
            lock = OutputLock(output)
    else:
        output, state = Path(os.path.realpath(args.output)), "new"
    with lock:
        image_size = args.image_size or spec.default_size
        tuner.build_backbone(image_size)  # weights first: a failed download stops here
        tuner.check_unfreeze(image_size, training.unfreeze)
        if distribution.replicas > 1:
            _say(
                args,
                f"strategy: {distribution.name}, {distribution.replicas} replicas on "
                f"{distribution.workers} worker(s), global batch "
                f"{args.batch_size * distribution.replicas}",
            )
        data = _image_folder(args, spec)
        tuner.build(data.image_size, data.num_classes)
        _say(args, f"classes ({data.num_classes}): {', '.join(data.class_names)}")
        _say(
            args,
            f"images: {len(data.train_files)} train, {len(data.validation_files)} "
            f"validation, {len(data.test_files)} test",
        )
        checkpoints = checkpoint_dir(output)
        if state == "replace" and distribution.is_chief and checkpoints.exists():
            shutil.rmtree(checkpoints)  # checked: a folder of keras_ft's checkpoints, no link
        tuner.fit(
            data,
            **_given(args),
            **_fit_arguments(args),
            resume=args.resume,
            checkpoint_dir=checkpoints,
        )
        if not distribution.is_chief:
            print(
                f"worker {distribution.worker_index} of {distribution.workers} finished; "
                f"weights sha256 {weights_sha256(tuner.model)}. The chief writes the run "
                "directory."
            )
            return 0
        # The output now holds this run's checkpoints; the finished run replaces them.
        _say(args, f"writing the run directory (model, SavedModel, report, logs): {output}")
        path = tuner.save(output, overwrite=True, signing_key=key)
    if tuner.metrics is not None:
        print(format_metrics(tuner.metrics))
    link = f" (a link to {path})" if os.path.islink(args.output) else ""
    print(printable(f"run directory: {args.output}{link}"))
    _say(args, f"report: {Path(args.output) / 'report' / 'report.html'} (open it in a browser)")
    return 0


def tune(args) -> int:
    from keras_ft.runs.output import OutputLock, check_output
    from keras_ft.tools.search_space import SETTINGS, check_search

    searched = _searched(args)
    check_search(args.trials, args.search, args.grid_points, **searched)  # before any image
    output, _ = check_output(args.output, (args.data_dir, args.test_dir), args.overwrite)
    spec, _ = _check_run(args, training=False, searched=SETTINGS)  # the search checks those
    _load_tensorflow(args)
    from keras_ft.runs.evaluation import format_metrics
    from keras_ft.tools.search import tune as search

    with OutputLock(output):
        data = _image_folder(args, spec)
        # Every model and training flag: fixed for all trials, unless it is searched.
        options = {**_options(args, ModelConfig), **_options(args, TrainingConfig)}
        fixed = {k: v for k, v in options.items() if k not in SETTINGS and k != "image_size"}
        result = search(
            data,
            output,
            trials=args.trials,
            search=args.search,
            grid_points=args.grid_points,
            overwrite=args.overwrite,
            **{**fixed, "backbone": spec.name},
            **_fit_arguments(args),
            **searched,
        )
    columns = ("trial", *SETTINGS, "val_accuracy")
    print("  ".join(columns))
    for row in result.trials:
        cells = [_cell(row.get(c)) for c in columns]
        print("  ".join(cells) + ("  <- best" if row["best"] else ""))
    if result.best.metrics is not None:
        print(format_metrics(result.best.metrics))
    print(printable(f"trials: {os.path.join(result.output, 'trials.csv')}"))
    print(printable(f"best run directory: {result.best_run_dir}"))
    return 0


def _searched(args) -> dict:
    """The search arguments given: a range or choices searches, a training flag fixes."""
    from keras_ft.utils.errors import KerasFTError

    given = {}
    for name, flag in (
        ("head_lr", "head_lr_range"),
        ("finetune_lr", "finetune_lr_range"),
        ("unfreeze", "unfreeze_choices"),
        ("dropout", "dropout_range"),
        ("dense_units", "dense_units_choices"),
    ):
        fixed, values = getattr(args, name), getattr(args, flag)
        if fixed is not None and values is not None:
            raise KerasFTError(
                f"Pass --{name.replace('_', '-')} to fix the setting or "
                f"--{flag.replace('_', '-')} to search it, not both."
            )
        if values is not None:
            given[name] = list(values)
        elif fixed is not None:
            given[name] = fixed
    units = given.get("dense_units")
    if isinstance(units, tuple):  # --dense-units, comma-separated layer sizes
        if len(units) > 1:
            raise KerasFTError(
                f"keras-ft tune searches heads with at most one hidden layer, received "
                f"--dense-units {','.join(map(str, units))}. Pass one width, or "
                "--dense-units-choices."
            )
        given["dense_units"] = units[0] if units else 0
    if args.augment_range is not None:
        given["augment_strength"] = list(args.augment_range)
    return given


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def evaluate(args) -> int:
    from keras_ft.data.folder import folder_dataset
    from keras_ft.runs.artifacts import load
    from keras_ft.runs.evaluation import evaluate_model, format_metrics, trained_symmetries

    predictor = load(args.run_dir, signing_key=_key(args))
    dataset, _ = folder_dataset(
        args.data_dir, predictor.class_names, predictor.image_size, args.batch_size
    )
    record = predictor.record
    symmetries = trained_symmetries(record.get("data") or {}, record.get("decisions", {}))
    metrics = evaluate_model(
        predictor.model, dataset, predictor.class_names, tta=args.tta, symmetries=symmetries
    )
    print(format_metrics(metrics))
    return 0


def predict(args) -> int:
    from keras_ft.runs.artifacts import load
    from keras_ft.utils.errors import KerasFTError

    predictor = load(args.run_dir, signing_key=_key(args))
    status = 0
    for path in args.images:
        try:
            result = predictor.predict([path], top_k=args.top_k, tta=args.tta)[0]
            print(json.dumps({"path": path, **result}))
        except KerasFTError as error:
            print(json.dumps({"path": path, "error": str(error)}))
            status = 2
    return status


def reproduce(args) -> int:
    from keras_ft.tools.reproduce import reproduce_run

    result = reproduce_run(
        args.run_dir,
        args.data,
        args.test_dir,
        verbose=0 if args.quiet else "auto",
        signing_key=_key(args),
    )
    print(f"recorded weights:   {result['recorded']}")
    print(f"reproduced weights: {result['reproduced']}")
    for key, (then, now) in result["environment_differences"].items():
        print(printable(f"environment differs: {key}: {then} (run) vs {now} (now)"))
    print("MATCH" if result["match"] else "MISMATCH")
    return 0 if result["match"] else 1


def export(args) -> int:
    from keras_ft.runs.deploy import export as export_run
    from keras_ft.runs.deploy import summary

    result = export_run(
        args.run_dir,
        args.output,
        format=args.format,
        quantize=args.quantize,
        version=args.version,
        test_dir=args.test_dir,
        calibration_dir=args.calibration_dir,
        calibration_images=args.calibration_images,
        max_images=args.max_images,
        seed=args.seed,
        signing_key=_key(args),
    )
    print(summary(result))
    return 0 if result.passed else 1


def explain(args) -> int:
    from keras_ft.runs.explain import explain as explain_images

    for path in explain_images(args.run_dir, args.images, args.output, signing_key=_key(args)):
        print(printable(f"wrote {path}"))
    return 0


def scan(args) -> int:
    from keras_ft.data.scan import scan_folder

    options = dict(cache=not args.no_cache, quiet=args.quiet)
    reports = [scan_folder(args.data_dir, **options)]
    if args.test_dir:
        reports.append(scan_folder(args.test_dir, training=reports[0], **options))
    print("\n\n".join(report.summary() for report in reports))
    refuse = [f"{len(r.bad_files)} problem(s) in {r.root}" for r in reports if r.bad_files]
    if len(reports[0].class_names) < 2:
        refuse.append("a classifier needs at least two class sub-folders")
    if refuse:
        print(printable(f"status: training would refuse this data ({'; '.join(refuse)})"))
        return 2
    warned = sum(len(r.warnings) for r in reports)
    print(f"status: ok, with {warned} warning(s) (not fatal)" if warned else "status: ok")
    return 0


def rank(args) -> int:
    from keras_ft.tools.ranking import rank as rank_candidates

    layers = args.layers
    if layers is not None and len(layers) == 1 and layers[0] in ("auto", "all"):
        layers = layers[0]
    result = rank_candidates(
        args.data_dir,
        backbones=args.backbones,
        weights=args.weights,
        image_size=args.image_size,
        layers=layers,
        pooling=args.pooling,
        output=args.output,
        validation_split=args.validation_split,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=not args.quiet,
    )
    print(_printable_lines(result.table()))
    for path in result.files:
        print(printable(f"wrote {path}"))
    return 0


def backbones(args) -> int:
    from keras_ft.models.backbones import describe_backbones

    print(describe_backbones())
    return 0


def _key(args) -> bytes | None:
    """The signing key: --signing-key-file's contents, else $KERAS_FT_SIGNING_KEY, else None."""
    from keras_ft.runs.manifest import signing_key

    return signing_key(key_file=args.signing_key_file)


def _say(args, message: str) -> None:
    """Print `message`, escaped (see `printable`), unless --quiet."""
    if not getattr(args, "quiet", False):
        print(printable(message))


def _printable_lines(message) -> str:
    """`message` for the terminal: its lines kept, control characters in names escaped."""
    return "\n".join(printable(line) for line in str(message).split("\n"))


def main(argv=None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.verbose:
        show_tensorflow_logs()
    from keras_ft.utils.errors import KerasFTError, WorkerLostError

    try:
        if args.command not in WITHOUT_TENSORFLOW + CHECKS_FIRST:
            _check_paths(args)  # a mistyped path is refused before TensorFlow loads
            _load_tensorflow(args)
        return args.func(args)
    except KerasFTError as error:
        print(f"error: {_printable_lines(error)}", file=sys.stderr)
        return 2
    except WorkerLostError as error:
        print(f"error: {_printable_lines(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `keras-ft ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        return 0
    except Exception:
        traceback.print_exc()
        print(
            "error: unexpected failure (above). Please report it with the command line.",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
