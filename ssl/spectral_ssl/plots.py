"""matplotlib for the files we write (spectra, experiment figures, sweeps)."""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported where a plot is made: it costs
    ~0.3 s and 30 MB, and training without plots never needs it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt
