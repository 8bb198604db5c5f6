"""The plots the suite and the frontier write: a headless matplotlib figure, saved atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from heartlora.io.atomic import atomic_write


def new_figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """``(figure, axis)`` of ``size`` inches at 120 dpi, drawn without a display (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=120)


def save_png(figure: Any, path: Path) -> Path:
    """Lay out ``figure``, write it to ``path`` as PNG atomically, and release it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path
