"""Thin ipywidgets explorers, one module per chapter: controls -> compute_* -> plot_*."""
