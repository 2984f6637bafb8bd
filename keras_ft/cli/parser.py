"""The `keras-ft` argument parser: its commands, their flags and help (`build_parser`).

The flags made from config fields come from `keras_ft.cli.flags`; the functions the
commands run, from `keras_ft.cli.train`, `keras_ft.cli.runs` and `keras_ft.cli.explore`.
"""

from __future__ import annotations

import argparse
import sys

from keras_ft.cli.explore import backbones, rank, scan
from keras_ft.cli.flags import Parser, add_run_arguments, group
from keras_ft.cli.runs import evaluate, explain, export, predict, reproduce
from keras_ft.cli.train import lr_find, train, tune
from keras_ft.config import parse_unfreeze, parse_weights


def _version() -> str:
    """keras_ft's installed version (its own `__version__` when not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("keras-ft")
    except importlib.metadata.PackageNotFoundError:
        from keras_ft.utils.version import __version__

        return __version__


_PROBE_HELP = (
    "keep a linear probe as the model: a logistic regression on the frozen, pooled "
    "features, folded into one Dense layer; an ordinary run directory (load, predict, "
    "export, reproduce). The epoch, learning-rate, augmentation and head flags are ignored."
)


def _add_train(commands, name: str = "train", head: str = "dense") -> None:
    # No abbreviated flags: each is named in full (a new flag cannot make one ambiguous).
    if head == "linear":
        p = commands.add_parser(
            name, help=_PROBE_HELP.split(";")[0], description=_PROBE_HELP, allow_abbrev=False
        )
    else:
        p = commands.add_parser(
            name, help="fine-tune a backbone on an image folder", allow_abbrev=False
        )
    add_run_arguments(p, "run directory to write", exclude=(), metavar="RUN_DIR")
    run = group(p, "output and run")
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
    add_run_arguments(p, "search directory to write (the best run goes to OUTPUT/best)")
    # Unset training flags for searched settings mean "search it"; a given one fixes it
    # (`Parser.set_defaults`: the training options still store NOT_GIVEN when left out).
    p.set_defaults(head_lr=None, finetune_lr=None, unfreeze=None, dropout=None, dense_units=None)
    p.set_defaults(recipe="none")  # a trial trains with the settings drawn for it
    search = group(p, "search")
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
    group(p, "output and run").add_argument(
        "--quiet", action="store_true", help="no trial summaries or progress lines"
    )
    p.set_defaults(func=tune)


IMAGES_HELP = "image files, or folders: every image file under them"
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
            "probe's validation accuracy and loss. Prints the table ranked by LogME and a "
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
    p.add_argument("images", nargs="+", help=IMAGES_HELP)
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
    p.add_argument("images", nargs="+", help=IMAGES_HELP)
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
        titles = {existing.title for existing in command._action_groups}
        where = group(command, "output and run") if "output and run" in titles else command
        where.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's own log lines too, and where each warning was raised",
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
    add_run_arguments(p, "PNG file to write the plot to", metavar="PNG")
    sweep = group(p, "range test")
    sweep.add_argument("--phase", choices=("head", "finetune"), default="head")
    sweep.add_argument("--steps", type=int, default=200, help="at most this many batches")
    sweep.add_argument("--start-lr", type=float, default=1e-7)
    sweep.add_argument("--end-lr", type=float, default=10.0)
    group(p, "output and run").add_argument(
        "--quiet", action="store_true", help="no progress lines or bars"
    )
    p.set_defaults(func=lr_find)
