"""Self-supervised methods: :class:`SSLMethod` owns the loop, each method defines its loss."""

from .base import SSLMethod
from .intl import INTL
from .supervised import SupervisedClassifier

__all__ = ["INTL", "SSLMethod", "SupervisedClassifier"]
