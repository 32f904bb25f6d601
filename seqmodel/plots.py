"""The one way seqmodel draws a picture: a matplotlib `Figure` on the Agg canvas, written to PNG.

No pyplot, so no global figure state, no display backend and nothing to close; a constrained
layout, so titles and labels are never clipped. matplotlib is imported only when a picture is drawn.

    with figure(run_dir / "loss.png", size=(7, 4)) as (fig, ax):
        ax.plot(steps, losses)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(path: str | Path, grid: tuple[int, int] | None = None, size: tuple[float, float] = (7, 4),
           dpi: int = 110, title: str = "") -> Iterator[tuple[Any, Any]]:
    """A figure saved to `path` when the block ends.

    Args:
        path: the PNG to write.
        grid: (rows, columns) of axes: yields a 2-D array of them; None yields one Axes.
        size: inches (width, height).
        title: a title over the whole figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(*grid, squeeze=False) if grid else fig.subplots()
    if title:
        fig.suptitle(title, fontsize=9)
    yield fig, axes
    fig.savefig(path)
