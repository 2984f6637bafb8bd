"""The `keras-ft` command: parses arguments and calls the library, nothing more.

`main` parses the command line (`keras_ft.cli.parser`) and runs the command's
function; `run` is the console script.

Exit codes: 0 success; 2 bad usage or bad input (one message, no traceback);
1 an unexpected failure.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path

from keras_ft.cli.common import load_tensorflow, printable_lines
from keras_ft.cli.parser import build_parser
from keras_ft.utils.quiet import show_tensorflow_logs

# Commands that never need TensorFlow: they start in a fraction of a second.
WITHOUT_TENSORFLOW = ("scan", "backbones")
# Commands that check their arguments, paths and folders first, then load TensorFlow
# (`load_tensorflow`): a mistake is refused in a fraction of a second.
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one `warning:` line on standard error (its source with --verbose)."""
    print(f"warning: {printable_lines(message)}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        show_tensorflow_logs()
    with warnings.catch_warnings():
        if not args.verbose:
            warnings.showwarning = _show_warning
        return _run(args)


def _run(args) -> int:
    """Run the parsed command; return the exit code."""
    from keras_ft.utils.errors import KerasFTError, WorkerLostError

    try:
        if args.command not in WITHOUT_TENSORFLOW + CHECKS_FIRST:
            _check_paths(args)  # a mistyped path is refused before TensorFlow loads
            load_tensorflow(args)
        return args.func(args)
    except KerasFTError as error:
        print(f"error: {printable_lines(error)}", file=sys.stderr)
        return 2
    except WorkerLostError as error:
        print(f"error: {printable_lines(error)}", file=sys.stderr)
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
