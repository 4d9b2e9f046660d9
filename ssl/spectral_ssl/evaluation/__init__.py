"""Evaluation of learned representations: kNN and feature extraction."""

from .features import evaluating, extract_features
from .knn import knn_accuracy, knn_predict
from .monitor import KNNMonitor

__all__ = ["KNNMonitor", "evaluating", "extract_features", "knn_accuracy", "knn_predict"]
