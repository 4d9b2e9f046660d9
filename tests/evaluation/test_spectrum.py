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


def test_the_plot_stops_at_the_rank_cap_and_names_its_numbers():
    from spectral_ssl.evaluation import covariance_spectrum, plot_spectra, spectrum_summary

    wide = torch.randn(20, 64)  # 20 images: 19 directions, the other 45 eigenvalues are round-off
    low = torch.randn(300, 5) @ torch.randn(5, 32)  # rank 5 by construction (an architecture's cap)
    spectra = {"wide": covariance_spectrum(wide), "low": covariance_spectrum(low)}
    summaries = {"wide": spectrum_summary(wide, spectra["wide"]), "low": spectrum_summary(low, spectra["low"])}
    figure = plot_spectra({"wide": spectra["wide"]}, "run/last.ckpt", num_samples=20, summaries=summaries)
    (line,) = figure.axes[0].get_lines()
    assert len(line.get_xdata()) == 19 and figure.axes[0].get_title() == "run/last.ckpt"
    assert line.get_label() == (
        f"wide: eff. rank {summaries['wide']['effective_rank']:.1f}, RankMe {summaries['wide']['rankme']:.1f}"
    )
    (line,) = plot_spectra({"low": spectra["low"]}, num_samples=300).axes[0].get_lines()
    assert len(line.get_xdata()) == 5 and line.get_label() == "low"
