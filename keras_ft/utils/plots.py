"""matplotlib, optional: the figure class when it is installed, and a figure as PNG bytes."""

from __future__ import annotations

import io

PLOTS_HINT = 'Plots need matplotlib: pip install "keras-ft[plots]"'


def matplotlib_figure():
    """matplotlib's `Figure` class (no pyplot, no GUI backend), or None when not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def png(figure) -> bytes:
    """`figure` drawn as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()
