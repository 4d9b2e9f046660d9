"""Self-supervised methods: :class:`SSLMethod` owns the loop, each method defines its loss."""

from .base import SSLMethod
from .intl import INTL

__all__ = ["INTL", "SSLMethod"]
