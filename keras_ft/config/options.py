"""The option-declaration machinery: `Option`, `option` and what is made from them.

Every option is declared once, as a dataclass field with an `Option` in its
metadata: its help text, its check and its command-line flag, as scikit-learn
declares parameter constraints in one table. `validate` checks a config's
fields; `takes_options` turns a method's `**options` into documented keyword
arguments; `options_of` and `defaults_of` read the declarations back (the
`keras-ft` flags are made from them in `keras_ft.cli.main`).
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from keras_ft.config.checks import Range, check


def _is_bool(value) -> bool:
    return isinstance(value, bool)


@dataclass(frozen=True)
class Option:
    """Everything about one config field, declared once (see `option`).

    Attributes:
        help: what the option does, in Python terms (docstrings, `--help`).
        valid: the check: true for an allowed value.
        expected: what `valid` allows, in words, for the error message.
        fix: a hint appended to the error message.
        choices: the allowed values, when they are a fixed set.
        convert: normalises a value before the check (e.g. a list to a tuple).
        flag: the command-line flag; `""` for none (the command sets it).
        parse: turns the flag's text into a value.
        metavar: the flag's placeholder in `--help`.
        cli_help: the flag's help, where the command-line form differs.
        cli_default: the flag's default: `"field"` (the field's), or another
            value (`None`: decided later, e.g. from the backbone).
        switches: `(flag, value, help)` triples, mutually exclusive flags
            that each set the option to one value (`--no-flip`, `--auto-flip`).
        constructor: a `TrainingConfig` option that `FineTuner` takes rather
            than `fit`, because it acts before training (on the build).
    """

    help: str
    valid: Callable[[object], bool] | None = None
    expected: str = ""
    fix: str = ""
    choices: tuple | None = None
    convert: Callable | None = None
    flag: str | None = None
    parse: Callable[[str], object] | None = None
    metavar: str | None = None
    cli_help: str | None = None
    cli_default: object = "field"
    switches: tuple = ()
    constructor: bool = False


def option(default=dataclasses.MISSING, **declared):
    """A dataclass field whose metadata is an `Option` (see there for the arguments).

    `valid` may be a `Range` (then `expected` defaults to its words and the
    flag parses a number), `choices` a tuple (the check and the flag's choices
    follow from it), and a bool default makes the check "True or False" and
    the flag a switch (`--name`, or `--no-name` when the default is True).
    """
    if "choices" in declared:
        choices = declared["choices"]
        declared.setdefault("valid", lambda value: value in choices)
        declared.setdefault("expected", f"one of {choices}")
    if isinstance(default, bool):
        declared.setdefault("valid", _is_bool)
        declared.setdefault("expected", "True or False")
    valid = declared.get("valid")
    if isinstance(valid, Range):
        declared.setdefault("expected", str(valid))
        declared.setdefault("parse", valid.parse)
    return dataclasses.field(default=default, metadata={"option": Option(**declared)})


def options_of(config) -> dict[str, Option]:
    """`{field name: Option}` of a config class or instance, in field order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(config)}


def defaults_of(config) -> dict[str, object]:
    """`{field name: default}` of a config class (fields without a default left out)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(config)
        if f.default is not dataclasses.MISSING
    }


def checked(name: str, declared: Option, value):
    """`value` of the field `name`, converted and checked against its `Option`."""
    if declared.convert is not None:
        value = declared.convert(value)
    if declared.valid is not None:
        check(declared.valid(value), name, declared.expected, value, declared.fix)
    return value


def validate(config) -> None:
    """Check every field of `config` against its `Option`, converting values first."""
    for name, declared in options_of(config).items():
        object.__setattr__(config, name, checked(name, declared, getattr(config, name)))


def describe(groups, indent: int = 8) -> str:
    """Keras-style `Args:` lines for `(config, field names)` groups, for a docstring."""
    first, rest = " " * indent, " " * (indent + 4)
    return "\n".join(
        textwrap.fill(
            f"{name}: {options_of(config)[name].help}",
            88,
            initial_indent=first,
            subsequent_indent=rest,
        )
        for config, names in groups
        for name in names
    )


def document(doc: str, *groups) -> str:
    """`doc` with its `{options}` line replaced by the `Args:` entries of the groups' fields."""
    lines, indent = [], 8
    for line in doc.splitlines():
        if line.strip() == "Args:":  # the entries go one level deeper
            indent = len(line) - len(line.lstrip()) + 4
        if line.strip() == "{options}":
            line = describe(groups, indent)
        lines.append(line)
    return "\n".join(lines)


def merge_options(given: dict, defaults: dict, where: str) -> dict:
    """`defaults` updated with `given`; a name not in `defaults` is a `TypeError`, as in Python."""
    for name in given:
        if name not in defaults:
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}")
    return {**defaults, **given}


def takes_options(*groups, defaults=None):
    """Decorator: a method's `**options` become documented keyword arguments.

    The method keeps one implementation taking `**options` (it checks them
    with `merge_options`); its signature (for `help()`, `inspect` and IDEs)
    lists the fields of each `(config, names)` group as keyword-only arguments
    with their defaults, and a `{options}` line in its docstring becomes their
    `Args:` lines, from the fields' help. No wrapper: warnings and tracebacks
    point at the caller as before.

    Args:
        *groups: `(config dataclass, field names)` pairs.
        defaults: `{name: default}` where the method's default differs from
            the field's (e.g. `None`: taken from the data).
    """
    defaults = defaults or {}
    fields = {(config, f.name): f for config, _ in groups for f in dataclasses.fields(config)}

    def decorate(method):
        signature = inspect.signature(method)
        own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults.get(name, fields[config, name].default),
            )
            for config, names in groups
            for name in names
        ]
        positional = [p for p in own if p.kind != p.KEYWORD_ONLY]
        keyword = [p for p in own if p.kind == p.KEYWORD_ONLY]
        full = signature.replace(parameters=[*positional, *added, *keyword])

        method.__doc__ = document(method.__doc__ or "", *groups)
        method.__signature__ = full
        return method

    return decorate
