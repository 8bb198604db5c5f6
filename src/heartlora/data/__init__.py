"""Datasets: VTAB-1k folder layout, FGVC, ImageFolder and the bundled mini-VTAB tasks."""
