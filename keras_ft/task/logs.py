"""Where a fit's TensorBoard logs go."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
import weakref


def tensorboard_dir(requested, checkpoint_dir, resume: bool, owner, stacklevel: int = 4):
    """The folder for a fit's TensorBoard logs, or None (see `FineTuner.fit`'s `tensorboard_dir`).

    Args:
        requested: `"auto"`, a path, or None (no logs).
        checkpoint_dir: the fit's checkpoints folder: `"auto"` logs into its `logs/`
            (emptied first unless `resume`), else into a temporary folder removed
            with `owner`.
        owner: the object whose lifetime a temporary folder follows.
        stacklevel: the missing-package warning's, pointing at the caller of `fit`.
    """
    if requested is None:
        return None
    if importlib.util.find_spec("tensorboard") is None:  # tf.summary needs it to write
        warnings.warn(
            "No TensorBoard logs: the tensorboard package is not installed. "
            "pip install tensorboard (or pass tensorboard_dir=None to silence this).",
            stacklevel=stacklevel,
        )
        return None
    if requested != "auto":
        return os.fspath(requested)
    if checkpoint_dir is None:
        scratch = tempfile.mkdtemp(prefix="keras_ft_logs_")
        weakref.finalize(owner, shutil.rmtree, scratch, ignore_errors=True)
        return scratch
    logs = os.path.join(checkpoint_dir, "logs")
    if not resume:  # a fresh run starts a fresh timeline
        shutil.rmtree(logs, ignore_errors=True)
    return logs
