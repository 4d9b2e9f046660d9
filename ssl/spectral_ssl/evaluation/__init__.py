"""Evaluation of learned representations: kNN (two protocols), linear evaluation (fast on cached
features, or the ImageNet protocol), the eigen-spectrum, and callbacks for pretraining."""

from .features import FeatureFile, apply_in_batches, evaluating, extract_features, extract_shard
from .knn import PROTOCOLS, knn_accuracy, knn_predict
from .linear import LinearClassifier, linear_probe
from .monitor import HeldOutFeatures, KNNMonitor, OnlineLinearProbe, Representation, SpectrumMonitor
from .spectrum import (
    condition_number,
    covariance_spectrum,
    effective_rank,
    numerical_rank,
    plot_spectra,
    publish_spectra,
    rankme,
    spectrum_summary,
    write_spectra,
)

__all__ = [
    "FeatureFile",
    "HeldOutFeatures",
    "KNNMonitor",
    "extract_shard",
    "LinearClassifier",
    "OnlineLinearProbe",
    "PROTOCOLS",
    "Representation",
    "apply_in_batches",
    "SpectrumMonitor",
    "condition_number",
    "covariance_spectrum",
    "effective_rank",
    "evaluating",
    "extract_features",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "numerical_rank",
    "plot_spectra",
    "publish_spectra",
    "rankme",
    "spectrum_summary",
    "write_spectra",
]
