"""The eigen-spectrum summaries against numpy's exact eigendecomposition."""

import numpy as np
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


def test_embedding_maps_keep_separated_classes_apart_and_are_seeded():
    """t-SNE of ten well-separated classes in 64 dimensions: each point's nearest neighbour on the
    map is of its class (scikit-learn's 1-NN, leave-one-out), the same map for the same seed;
    UMAP without umap-learn names the package."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from spectral_ssl.evaluation.embedding import embedding_map

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 10
    features = 6 * torch.randn(10, 64, generator=generator)[labels] + torch.randn(300, 64, generator=generator)
    coordinates = embedding_map(features, "tsne", seed=1)
    assert coordinates.shape == (300, 2)
    assert cross_val_score(KNeighborsClassifier(1), coordinates, labels.numpy(), cv=10).mean() > 0.97
    np.testing.assert_array_equal(coordinates, embedding_map(features, "tsne", seed=1))
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install umap-learn"):
            embedding_map(features, "umap")
    with pytest.raises(ValueError, match="at least 3 points"):
        embedding_map(features[:2])
