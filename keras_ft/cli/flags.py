"""The `keras-ft` parser class and the flags made from config fields.

`Parser` gives Keras-style usage errors and tells the training options the
command line names (`given_options`) from those left at their defaults: a
training flag stores `NOT_GIVEN` when it is left out, and `parse_args` puts the
declared default in its place.
"""

from __future__ import annotations

import argparse
import re

from keras_ft.config import (
    FIT_OPTIONS,
    DataConfig,
    ModelConfig,
    Option,
    TrainingConfig,
    options_of,
)
from keras_ft.config.recipe import RECIPES
from keras_ft.utils.text import close_matches, did_you_mean, format_rate, one_of


class NotGiven:
    """The type of `NOT_GIVEN`: the value a training flag stores when it is left out."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()

CONFIGS = (DataConfig, ModelConfig, TrainingConfig)

# `train`'s argument groups, in --help's order; a config field's group is its config's
# (data, model, training) unless named here.
GROUPS = ("data", "augmentation", "model", "training", "recipe", "devices", "output and run")
FIELD_GROUPS = {
    **dict.fromkeys(
        ("augment", "flip", "quarter_turns", "rotation", "zoom", "contrast", "translation"),
        "augmentation",
    ),
    **dict.fromkeys(("head_augment", "head_copies"), "augmentation"),
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

# Options `train` alone takes: tune's trials and lr-find's sweep run on one device.
TRAIN_ONLY = ("strategy", "lr_scaling")

# The options `--recipe auto` sets when they are not given, at any size of the data.
AUTO_SETS = {name for n in (0, 10**9) for name in RECIPES["auto"].settings(n)}


def _auto_sizes(recipe) -> str:
    """What `recipe` (an `AutoRecipe`) sets by the training split's size, in flags."""
    (_, first_head, first_finetune), *later = recipe.epochs
    epochs = ", ".join(
        [f"{first_head} and {first_finetune} below {later[0][0]} training images"]
        + [f"{head} and {finetune} from {images}" for images, head, finetune in later]
    )
    rates = ", ".join(
        f"{format_rate(rate)} and {warmup} from {images}"
        for images, rate, warmup in recipe.finetune_lrs
    )
    return (
        f"--head-epochs and --finetune-epochs {epochs}; --finetune-lr and --warmup-epochs "
        f"{rates}, with --finetune-schedule {recipe.finetune_schedule}"
    )


class Parser(argparse.ArgumentParser):
    """argparse's parser with Keras-style usage errors: a mistyped flag, command or
    choice gets a "did you mean", and an unknown flag is refused under the usage of the
    command it was given to (argparse's own says `keras-ft`'s).

    A command's flags that store `NOT_GIVEN` when left out are listed in its
    `option_defaults` (`{dest: default}`); `parse_args` sets each one left out to its
    default and lists those given in `args.given` (see `given_options`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.option_defaults: dict[str, object] = {}

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        command = command_parser(self, parsed)
        if extras:
            command.error(unrecognized(extras, command))
        take_defaults(parsed, getattr(command, "option_defaults", {}))
        check = getattr(parsed, "check_arguments", None)
        if check is not None:
            message = check(parsed)
            if message:
                command.error(message)
        return parsed

    def set_defaults(self, **kwargs):
        """argparse's; a flag that stores `NOT_GIVEN` keeps storing it, and the value it
        stands for when left out becomes `kwargs`' (e.g. `tune`'s None: search it)."""
        for name in [name for name in kwargs if name in self.option_defaults]:
            self.option_defaults[name] = kwargs.pop(name)
        super().set_defaults(**kwargs)

    def declared_default(self, dest: str):
        """The value `dest` takes when its flag is left out (`NOT_GIVEN` resolved)."""
        default = self.get_default(dest)
        return self.option_defaults[dest] if default is NOT_GIVEN else default

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            hint = did_you_mean(str(value), [str(choice) for choice in action.choices])
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{error.message}.{hint}") from None


def take_defaults(args, defaults: dict) -> None:
    """Set each of `defaults`' options that `args` holds as `NOT_GIVEN` to its default;
    `args.given`: the names of the others, in `defaults`' order."""
    given = []
    for name, default in defaults.items():
        if getattr(args, name) is NOT_GIVEN:
            setattr(args, name, default)
        else:
            given.append(name)
    args.given = tuple(given)


def given_options(args) -> dict:
    """`fit`'s training options that the command line names (`args.given`): the recipe
    keeps them, even at the default's value."""
    return {name: getattr(args, name) for name in FIT_OPTIONS if name in args.given}


def config_options(args, config) -> dict:
    """`config`'s fields that the command line set (every field with a flag, given or not)."""
    return {name: getattr(args, name) for name in options_of(config) if hasattr(args, name)}


def command_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The sub-command's parser that `args` were parsed by (else `parser`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, action.dest, None), parser)
    return parser


def unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
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


def group(p: argparse.ArgumentParser, title: str):
    """`p`'s argument group `title`, made (with all of `GROUPS` before it) if need be."""
    groups = {existing.title: existing for existing in p._action_groups}
    if title not in groups and title in GROUPS:
        for name in GROUPS:
            if name not in groups:
                groups[name] = p.add_argument_group(name)
    return groups.get(title) or p.add_argument_group(title)


def add_run_arguments(p, output_help: str, exclude=TRAIN_ONLY, metavar="OUTPUT") -> None:
    """The flags `train`, `tune` and `lr-find` share: one per config field, and --output,
    in argument groups (`GROUPS`). `fit`'s training options store `NOT_GIVEN` when left
    out; their defaults go into `p.option_defaults`."""
    p.usage = f"%(prog)s DATA_DIR --output {metavar} [options]"
    group(p, "data").add_argument(
        "data_dir", metavar="DATA_DIR", help="training folder: DATA_DIR/<class>/<image>"
    )
    group(p, "output and run").add_argument(
        "--output", required=True, metavar=metavar, help=output_help
    )
    group(p, "recipe").add_argument(
        "--recipe",
        choices=("auto", "none"),
        default="auto",
        help="auto (train's default): settings that adapt to the data for every flag left "
        "at its default (--fallback-to-head --fallback-to-probe --refit-probe, with a "
        f"validation split; {_auto_sizes(RECIPES['auto'])}); what it set is printed and "
        "kept in run.json. none (tune's default): the flags as given, defaults included",
    )
    seen = set(exclude)
    for config in CONFIGS:
        for name, declared in options_of(config).items():
            if name not in seen and declared.flag != "":
                where = group(p, FIELD_GROUPS.get(name, CONFIG_GROUPS[config]))
                default = config.__dataclass_fields__[name].default
                sentinel = config is TrainingConfig and name in FIT_OPTIONS
                add_option(where, name, declared, default, sentinel)
                if sentinel:
                    p.option_defaults[name] = parsed_default(declared, default)
                seen.add(name)
    run = group(p, "output and run")
    run.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="write no TensorBoard logs (default: RUN_DIR/logs)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def cli_default(declared: Option, default):
    """The value a config field's flag stands for when it is not given."""
    return default if declared.cli_default == "field" else declared.cli_default


def parsed_default(declared: Option, default):
    """The value a config field's flag left out gives: `cli_default`, a string of it read
    by the flag's `parse` (as argparse reads a string default)."""
    default = cli_default(declared, default)
    if isinstance(default, str) and declared.parse is not None and not declared.switches:
        return declared.parse(default)
    return default


def flags(name: str, declared: Option, default) -> tuple[str, ...]:
    """The flags of config field `name` (whose field default is `default`)."""
    if declared.switches:
        return tuple(flag for flag, _, _ in declared.switches)
    prefix = "--no-" if cli_default(declared, default) is True else "--"
    return (declared.flag or f"{prefix}{name.replace('_', '-')}",)


def add_option(p, name: str, declared: Option, default, sentinel: bool = False) -> None:
    """The flag of config field `name`, from its `Option`: it stores into `args.<name>`,
    `NOT_GIVEN` when it is left out if `sentinel`, else its default."""
    flag = flags(name, declared, default)[0]
    default = cli_default(declared, default)
    stored = NOT_GIVEN if sentinel else default
    text = declared.cli_help or re.sub(r'`"?([^`"]*)"?`', r"\1", declared.help.rstrip("."))
    text = text.replace("%", "%%")  # argparse formats help with %
    if declared.switches:  # mutually exclusive flags, one value each
        switches = p.add_mutually_exclusive_group()
        for flag, value, switch_help in declared.switches:
            switches.add_argument(
                flag, dest=name, action="store_const", const=value, help=switch_help
            )
        p.set_defaults(**{name: stored})
    elif isinstance(default, bool):
        action = "store_false" if default else "store_true"
        if name in AUTO_SETS:
            text += " (--recipe auto turns it on unless it cannot work, e.g. without validation)"
        p.add_argument(flag, dest=name, action=action, default=stored, help=text)
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
            default=stored,
            metavar=declared.metavar,
            help=text,
        )
