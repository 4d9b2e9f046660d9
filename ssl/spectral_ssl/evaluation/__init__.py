"""Evaluation of learned representations: kNN, the spectrum, feature extraction."""

from .features import evaluating, extract_features
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe
from .monitor import KNNMonitor
from .spectrum import covariance_spectrum, effective_rank

__all__ = ["KNNMonitor", "evaluating", "extract_features", "knn_accuracy", "knn_predict", "linear_probe",
           "covariance_spectrum", "effective_rank"]
