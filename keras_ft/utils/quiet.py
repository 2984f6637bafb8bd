"""What keras_ft keeps TensorFlow from printing, unless asked. Imports no TensorFlow.

Two kinds of lines are TensorFlow's, not the user's business:

- its C++ side's log lines (oneDNN, CUDA, `failed call to cuInit`, CPU
  features), written to standard error while it loads and when it first
  looks for devices. keras_ft sets `TF_CPP_MIN_LOG_LEVEL` to 3 (none) when
  it is imported, unless TensorFlow is loaded already or the variable is set
  (then it is the user's choice), and imports TensorFlow itself, on first use
  of a name of `keras_ft` that needs it, with standard error pointed at
  /dev/null meanwhile (the lines written while it loads ignore the variable
  when it is set after the process started).
- its `tf.function retracing` warnings where keras_ft triggers them: every
  feature extractor and classifier keras_ft builds is a new Keras model with
  its own compiled predict step, which TensorFlow counts as retracing one
  function. They are dropped when keras_ft's code is on the stack; set the
  `"tensorflow"` logger to INFO or DEBUG to see them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
_state = {"set_level": False}


class _KerasFTRetracing(logging.Filter):
    """Drops TensorFlow's retracing warnings raised under keras_ft's code."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "tf.function retracing" not in record.getMessage():
            return True
        level = logging.getLogger("tensorflow").level
        if level != logging.NOTSET and level < logging.WARNING:  # asked for
            return True
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith("keras_ft."):
                return False
            frame = frame.f_back
        return True


_FILTER = _KerasFTRetracing()


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ log lines and keras_ft's retracing warnings out (see above).

    Called when keras_ft is imported; cheap, and it imports nothing.
    """
    if "tensorflow" not in sys.modules and TF_LOG_LEVEL not in os.environ:
        os.environ[TF_LOG_LEVEL] = "3"
        _state["set_level"] = True
    logger = logging.getLogger("tensorflow")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def show_tensorflow_logs() -> None:
    """Undo `quiet_tensorflow` (`keras-ft --verbose`), if TensorFlow is not loaded yet."""
    if _state["set_level"] and "tensorflow" not in sys.modules:
        os.environ.pop(TF_LOG_LEVEL, None)
        _state["set_level"] = False
    logging.getLogger("tensorflow").removeFilter(_FILTER)


@contextlib.contextmanager
def tensorflow_may_load(quietly: bool | None = None):
    """A block in which TensorFlow may load (a backbone plugin's import, say): standard
    error points at /dev/null meanwhile when `quietly`, and the Python warnings raised in
    the block are shown after it.

    Args:
        quietly: `None`: unless `TF_CPP_MIN_LOG_LEVEL` asks for TensorFlow's lines
            (is set below 3). Nothing is hidden once TensorFlow is loaded.
    """
    if quietly is None:
        quietly = os.environ.get(TF_LOG_LEVEL) == "3"
    if not quietly or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught, open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        for warning in caught:  # after the block, failed or not
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )


def import_tensorflow(quietly: bool | None = None) -> None:
    """Import TensorFlow (through Keras), quietly (see `tensorflow_may_load`)."""
    with tensorflow_may_load(quietly):
        import keras  # noqa: F401  (it imports TensorFlow)
