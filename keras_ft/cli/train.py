"""The `keras-ft` commands that train: `train` (and `probe`), `lr-find` and `tune`.

Each checks every flag and folder it can before TensorFlow loads, so that a
mistake is refused in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from keras_ft.cli.common import load_tensorflow, say, signing_key_from
from keras_ft.cli.flags import config_options, given_options
from keras_ft.config import (
    CONSTRUCTOR_OPTIONS,
    DataConfig,
    ModelConfig,
    TrainingConfig,
    options_of,
)
from keras_ft.utils.quiet import tensorflow_may_load
from keras_ft.utils.text import printable

# Strategies run in one process, which is the chief: it may check --output before TensorFlow.
ONE_PROCESS = ("auto", "none", "mirrored")


def check_run(args, training: bool = True, searched=(), recipe=None, **fixed):
    """Every check of a training command's arguments that needs no TensorFlow, so that a
    mistake is refused at once: the backbone's name, the data, model and training options
    (`fixed` replaces training options, and `recipe` is the one `fit` applies, see
    `training_config`; without `training` they are left to the search, as are the model
    options named in `searched`), the image size and weights file for the backbone, and
    the folders' layout (the images themselves are scanned later).

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
        directory=args.data_dir, **{**config_options(args, DataConfig), "image_size": image_size}
    )
    declared = options_of(ModelConfig)
    for name, value in config_options(args, ModelConfig).items():
        if name != "image_size" and name not in searched:
            checked(name, declared[name], value)
    config = training_config(args, recipe, **fixed) if training else None
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


def fine_tuner(args, training):
    """The `FineTuner` that `train` and `lr-find` build: the model flags and `training`."""
    from keras_ft.task.finetuner import FineTuner

    return FineTuner.from_configs(config_options(args, ModelConfig), training)


def training_config(args, recipe=None, **fixed):
    """The training flags (and `fixed` values) as a `TrainingConfig`: all checked at once.

    Under `recipe`, flags that are valid only with settings it makes for some sizes of
    training split (`--warmup-epochs` alone needs the cosine schedule `auto` sets on
    larger splits, `--refit-probe` the `fallback_to_probe` it sets) are left to `fit`,
    which checks them once the recipe has read the data: the config then holds the
    constructor's options and `unfreeze` alone, and `fit` gets every flag given.
    """
    from keras_ft.config.recipe import could_resolve
    from keras_ft.utils.errors import KerasFTError

    options = {**config_options(args, TrainingConfig), **fixed}
    try:
        return TrainingConfig(**options)
    except KerasFTError:
        if recipe is None or not could_resolve(recipe, options, args.given, args.dense_units):
            raise
    return TrainingConfig(**{name: options[name] for name in (*CONSTRUCTOR_OPTIONS, "unfreeze")})


def image_folder(args, spec):
    """The `ImageFolder` that `train`, `tune` and `lr-find` read, from the data flags."""
    from keras_ft.data.folder import ImageFolder

    options = {
        **config_options(args, DataConfig),
        "image_size": args.image_size or spec.default_size,
    }
    return ImageFolder(args.data_dir, **options, quiet=args.quiet)


def fit_arguments(args) -> dict:
    """The `FineTuner.fit` arguments that are not training options: how to run, not what."""
    return dict(
        recipe=None if args.recipe == "none" else args.recipe,
        tensorboard_dir=None if args.no_tensorboard else "auto",
        verbose=0 if args.quiet else "auto",
    )


def train(args) -> int:
    from keras_ft.runs.output import check_output

    signing_key = signing_key_from(args)  # a bad key file is refused before any training
    # Every flag and folder checked before anything runs (some, after the recipe, in `fit`).
    spec, training = check_run(args, recipe=fit_arguments(args)["recipe"])
    checked_output = None
    if args.strategy in ONE_PROCESS:
        data_dirs = (args.data_dir, args.test_dir)
        checked_output = check_output(args.output, data_dirs, args.overwrite, args.resume)
    load_tensorflow(args)
    from keras_ft.runs.evaluation import format_metrics
    from keras_ft.runs.manifest import checkpoint_dir
    from keras_ft.runs.reproducibility import weights_sha256

    # First: a multi-worker strategy joins its cluster before TensorFlow runs anything.
    tuner = fine_tuner(args, training)
    distribution = tuner.distribution
    output, state, lock = _claim_output(args, distribution, checked_output)
    with lock:
        data = _prepare(args, spec, tuner, training)
        checkpoints = checkpoint_dir(output)
        if state == "replace" and distribution.is_chief and checkpoints.exists():
            shutil.rmtree(checkpoints)  # checked: a folder of keras_ft's checkpoints, no link
        tuner.fit(
            data,
            **given_options(args),
            **fit_arguments(args),
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
        say(args, f"writing the run directory (model, SavedModel, report, logs): {output}")
        path = tuner.save(output, overwrite=True, signing_key=signing_key)
    if tuner.metrics is not None:
        print(format_metrics(tuner.metrics))
    link = f" (a link to {path})" if os.path.islink(args.output) else ""
    print(printable(f"run directory: {args.output}{link}"))
    say(args, f"report: {Path(args.output) / 'report' / 'report.html'} (open it in a browser)")
    return 0


def _claim_output(args, distribution, checked_output):
    """`train`'s run directory, its state (`check_output`'s) and the lock to hold on it:
    `checked_output` where it was checked before TensorFlow; else the chief (or a resumed
    worker) checks it now, and other workers leave it alone."""
    from keras_ft.runs.output import OutputLock, check_output

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
    return output, state, lock


def _prepare(args, spec, tuner, training):
    """Build `train`'s backbone (its weights first), read the data, build the model and say
    what it trains on; return the `ImageFolder`."""
    distribution = tuner.distribution
    image_size = args.image_size or spec.default_size
    tuner.build_backbone(image_size)  # weights first: a failed download stops here
    tuner.check_unfreeze(image_size, training.unfreeze)
    if distribution.replicas > 1:
        say(
            args,
            f"strategy: {distribution.name}, {distribution.replicas} replicas on "
            f"{distribution.workers} worker(s), global batch "
            f"{args.batch_size * distribution.replicas}",
        )
    data = image_folder(args, spec)
    tuner.build(data.image_size, data.num_classes)
    say(args, f"classes ({data.num_classes}): {', '.join(data.class_names)}")
    say(args, f"images: {data.split_summary}")
    return data


def lr_find(args) -> int:
    from keras_ft.runs.output import check_output_file

    data_dirs = (args.data_dir, args.test_dir)
    output = check_output_file(args.output, ".png", data_dirs, args.overwrite)
    spec, training = check_run(args, strategy="none")
    load_tensorflow(args)
    tuner = fine_tuner(args, training)
    data = image_folder(args, spec)
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


def tune(args) -> int:
    from keras_ft.runs.output import OutputLock, check_output
    from keras_ft.tools.search_space import SETTINGS, check_search

    searched = _searched(args)
    check_search(args.trials, args.search, args.grid_points, **searched)  # before any image
    output, _ = check_output(args.output, (args.data_dir, args.test_dir), args.overwrite)
    spec, _ = check_run(args, training=False, searched=SETTINGS)  # the search checks those
    load_tensorflow(args)
    from keras_ft.runs.evaluation import format_metrics
    from keras_ft.tools.search import tune as search

    with OutputLock(output):
        data = image_folder(args, spec)
        # Every model and training flag: fixed for all trials, unless it is searched.
        options = {**config_options(args, ModelConfig), **config_options(args, TrainingConfig)}
        fixed = {k: v for k, v in options.items() if k not in SETTINGS and k != "image_size"}
        result = search(
            data,
            output,
            trials=args.trials,
            search=args.search,
            grid_points=args.grid_points,
            overwrite=args.overwrite,
            **{**fixed, "backbone": spec.name},
            **fit_arguments(args),
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
