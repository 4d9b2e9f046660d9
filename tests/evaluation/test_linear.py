"""The fast linear probe against scikit-learn's logistic regression."""

import torch


def test_linear_probe_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from spectral_ssl.evaluation import linear_probe

    generator = torch.Generator().manual_seed(1)
    centres = 1.5 * torch.randn(5, 20, generator=generator)
    labels = torch.randint(0, 5, (1500,), generator=generator)
    features = centres[labels] + torch.randn(1500, 20, generator=generator) * 1.5 + 7.0
    train, test = slice(0, 1000), slice(1000, None)
    ours = linear_probe(features[train], labels[train], features[test], labels[test], epochs=100)
    reference = LogisticRegression(max_iter=2000).fit(features[train].numpy(), labels[train].numpy())
    expected = reference.score(features[test].numpy(), labels[test].numpy())
    assert 0.5 < expected < 0.99  # a problem with room on both sides
    assert abs(ours - expected) < 0.03
    assert ours == linear_probe(features[train], labels[train], features[test], labels[test], epochs=100)
