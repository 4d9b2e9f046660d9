"""``python -m spectral_ssl <command>`` (what ``torchrun -m spectral_ssl`` runs)."""

from .commands import entry_point

entry_point()
