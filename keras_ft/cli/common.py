"""What the `keras-ft` commands share: the signing key, printing, loading TensorFlow."""

from __future__ import annotations

import os

from keras_ft.utils.quiet import import_tensorflow
from keras_ft.utils.text import printable


def signing_key_from(args) -> bytes | None:
    """The signing key: --signing-key-file's contents, else $KERAS_FT_SIGNING_KEY, else None."""
    from keras_ft.runs.manifest import signing_key

    return signing_key(key_file=args.signing_key_file)


def say(args, message: str) -> None:
    """Print `message`, escaped (see `printable`), unless --quiet."""
    if not getattr(args, "quiet", False):
        print(printable(message))


def printable_lines(message) -> str:
    """`message` for the terminal: its lines kept, control characters in names escaped."""
    return "\n".join(printable(line) for line in str(message).split("\n"))


def load_tensorflow(args) -> None:
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
