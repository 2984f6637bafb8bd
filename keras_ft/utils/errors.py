"""The one exception type for bad user input."""


class KerasFTError(ValueError):
    """Bad input from the user: a path, an argument or a data set.

    The message names what is wrong, what was expected and how to fix it.
    The command line prints it without a traceback and exits with code 2.
    """


class WorkerLostError(RuntimeError):
    """A multi-worker run lost a worker (it died or hung) and cannot go on.

    The message names the worker and says how to resume. The command line
    prints it without a traceback and exits with code 1.
    """
