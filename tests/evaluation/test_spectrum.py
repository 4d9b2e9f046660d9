"""The eigen-spectrum summaries against numpy's exact eigendecomposition."""

import pytest
import torch


def test_effective_rank_and_spectrum():
    import numpy as np

    from spectral_ssl.evaluation import covariance_spectrum, effective_rank

    assert effective_rank(torch.ones(7)) == pytest.approx(7)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1)
    features = torch.randn(500, 6) * torch.tensor([3.0, 2, 1, 1, 0.5, 0.1])
    spectrum = covariance_spectrum(features)
    expected = np.sort(np.linalg.eigvalsh(np.cov(features.numpy().T)))[::-1]
    np.testing.assert_allclose(spectrum.numpy(), expected, rtol=1e-5)
    p = expected / expected.sum()
    assert effective_rank(spectrum) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
