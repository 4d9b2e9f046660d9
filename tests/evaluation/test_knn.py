"""kNN against scikit-learn and a hand-computed weighted case."""

import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from spectral_ssl.evaluation import PROTOCOLS, knn_accuracy, knn_predict


def test_unweighted_matches_scikit_learn():
    bank, labels = torch.randn(300, 16), torch.randint(0, 5, (300,))
    queries = torch.randn(100, 16)
    for k in (1, 5, 20):
        sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(bank.numpy(), labels.numpy())
        expected = torch.from_numpy(sk.predict(queries.numpy()))
        assert torch.equal(knn_predict(bank, labels, queries, k=k, temperature=None), expected)
        # chunking changes nothing
        assert torch.equal(knn_predict(bank, labels, queries, k=k, temperature=None, chunk_size=7), expected)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_intl_protocol_5nn_l2_matches_scikit_learn(backend):
    """5-NN, L2 distance, unweighted majority: on L2-normalized features and on raw ones."""
    import torch.nn.functional as F

    bank, labels = torch.randn(500, 32), torch.randint(0, 7, (500,))
    queries = torch.randn(200, 32)
    sk = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(F.normalize(bank).numpy(), labels.numpy())
    expected = torch.from_numpy(sk.predict(F.normalize(queries).numpy()))
    got = knn_predict(bank, labels, queries, k=5, temperature=None, metric="l2", backend=backend, chunk_size=64)
    assert torch.equal(got, expected)
    # without normalization the protocol is plain Euclidean 5-NN
    sk = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(bank.numpy(), labels.numpy())
    got = knn_predict(bank, labels, queries, k=5, temperature=None, metric="l2", normalize=False, backend=backend)
    assert torch.equal(got, torch.from_numpy(sk.predict(queries.numpy())))


def official_eval_knn(bank, labels, queries, k=5):
    """The INTL / W-MSE ``eval_knn``, written out: cdist on the raw features, the k nearest, and
    the most frequent label among them (``unique`` sorts, ``argmax`` takes the first: ties go to
    the smallest label)."""
    nearest = torch.cdist(queries.double(), bank.double()).topk(k, dim=1, largest=False).indices
    predictions = []
    for row in labels[nearest]:
        values, counts = row.unique(return_counts=True)
        predictions.append(values[counts.argmax()])
    return torch.stack(predictions)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_official_5nn_protocol_uses_raw_features_with_their_varied_norms(backend):
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(600, 24, generator=generator), torch.randn(250, 24, generator=generator)
    bank = bank * torch.empty(600, 1).uniform_(0.1, 10.0, generator=generator)  # norms over two decades
    queries = queries * torch.empty(250, 1).uniform_(0.1, 10.0, generator=generator)
    labels = torch.randint(0, 6, (600,), generator=generator)
    expected = official_eval_knn(bank, labels, queries)
    got = knn_predict(bank, labels, queries, backend=backend, chunk_size=100, **PROTOCOLS["5-NN L2 (INTL)"])
    assert torch.equal(got, expected)
    # normalising first (what this protocol used to do) answers differently on these features
    normalized = knn_predict(bank, labels, queries, k=5, temperature=None, metric="l2", normalize=True)
    assert (normalized != expected).float().mean() > 0.3


def test_faiss_and_torch_agree_on_weighted_knn_with_a_chunked_bank():
    bank, labels = torch.randn(3000, 64), torch.randint(0, 10, (3000,))
    queries = torch.randn(300, 64)
    for k in (20, 200):
        by_faiss = knn_predict(bank, labels, queries, k=k, backend="faiss")
        by_torch = knn_predict(bank, labels, queries, k=k, backend="torch", chunk_size=256)  # 12 bank chunks
        assert (by_faiss == by_torch).float().mean() == 1.0


def test_weighted_vote_by_hand():
    # Query along x. Neighbours: class 0 at cos 1.0, class 1 at cos 0.8 and 0.6; far one excluded (k=3).
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[2.0, 0.0]])
    # T = 1: class 0 gets e^1 = 2.718, class 1 gets e^0.8 + e^0.6 = 4.048 -> class 1.
    assert knn_predict(bank, labels, query, k=3, temperature=1.0).item() == 1
    # T = 0.1: e^10 = 22026 vs e^8 + e^6 = 3384 -> class 0. Unweighted majority -> class 1.
    assert knn_predict(bank, labels, query, k=3, temperature=0.1).item() == 0
    assert knn_predict(bank, labels, query, k=3, temperature=None).item() == 1
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), k=3, temperature=0.1) == 1.0


def reference_knn(bank, labels, queries, k, temperature, metric, num_classes):
    """Written out in float64: scores for every pair, the k best by (score desc, bank index asc),
    then the vote (weighted, or majority with ties to the smallest label)."""
    import torch.nn.functional as F

    bank, queries = F.normalize(bank.double(), dim=1), F.normalize(queries.double(), dim=1)
    scores = queries @ bank.T if metric == "cosine" else -torch.cdist(queries, bank).square()
    predictions = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: (-float(row[j]), j))[:k]
        votes = torch.zeros(num_classes, dtype=torch.float64)
        for j in order:
            votes[labels[j]] += 1.0 if temperature is None else torch.exp(row[j] / temperature)
        predictions.append(int(votes.argmax()))
    return torch.tensor(predictions)


@pytest.mark.parametrize("k, temperature, metric", [(5, None, "l2"), (20, 0.07, "cosine"), (7, None, "cosine")])
def test_ties_go_to_the_lower_bank_index_whatever_the_chunking(k, temperature, metric, tied_bank):
    bank, labels, queries = tied_bank
    expected = reference_knn(bank, labels, queries, k, temperature, metric, 4)
    for chunk_size in (4, 13, 4096):
        got = knn_predict(
            bank,
            labels,
            queries,
            k=k,
            temperature=temperature,
            metric=metric,
            backend="torch",
            chunk_size=chunk_size,
            num_classes=4,
        )
        assert torch.equal(got, expected), chunk_size


def test_bank_in_a_feature_file_gives_the_in_memory_answer(tmp_path):
    from spectral_ssl.evaluation import FeatureFile

    bank, labels = torch.randn(1000, 32), torch.randint(0, 10, (1000,))
    queries = torch.randn(64, 32)
    store = FeatureFile(tmp_path / "bank.f32", 32)
    for part in bank.split(300):
        store.append(part)
    store.finish()
    assert torch.equal(store[250:700], bank[250:700]) and len(store) == 1000
    for options in (dict(k=20), dict(k=5, temperature=None, metric="l2")):
        assert torch.equal(
            knn_predict(store, labels, queries, chunk_size=128, **options),
            knn_predict(bank, labels, queries, backend="torch", **options),
        )


def test_k_outside_the_bank_is_refused():
    bank, labels = torch.randn(30, 4), torch.randint(0, 3, (30,))
    for k in (0, 31):
        with pytest.raises(ValueError, match=f"k={k} needs a bank of at least k images.*has 30"):
            knn_predict(bank, labels, torch.randn(2, 4), k=k)


def test_balanced_subset_is_seeded_balanced_and_nested():
    from spectral_ssl.data import balanced_order, balanced_subset

    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([50, 7, 30, 13])])[torch.randperm(100)]
    order = balanced_order(labels, seed=1)
    assert sorted(order.tolist()) == list(range(100))
    assert torch.equal(order, balanced_order(labels, seed=1)) and not torch.equal(order, balanced_order(labels, seed=2))
    for size in (4, 20, 28, 40, 99):
        subset = balanced_subset(labels, size, seed=1)
        assert len(subset) == size and torch.equal(subset, subset.sort().values)
        counts = torch.bincount(labels[subset], minlength=4)
        room = torch.tensor([50, 7, 30, 13])
        full = counts == room  # classes used up; the others differ by at most one
        assert int(counts[~full].max() - counts[~full].min()) <= 1
        assert bool((counts[full] <= counts[~full].min()).all())
        assert set(subset.tolist()) <= set(balanced_subset(labels, size + 1, seed=1).tolist())  # nested
    assert torch.equal(balanced_subset(labels, None), torch.arange(100))
    assert torch.equal(balanced_subset(labels, 500), torch.arange(100))


def test_the_faiss_backend_says_which_extra_installs_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if neither extra were installed
    bank, labels = torch.randn(30, 4), torch.arange(30) % 3
    with pytest.raises(ImportError, match=r"spectral-ssl\[faiss-cpu\].*spectral-ssl\[faiss-gpu\].*not both"):
        knn_predict(bank, labels, bank[:5], k=5, backend="faiss")
    assert torch.equal(knn_predict(bank, labels, bank[:5], k=5), labels[:5])  # the default needs no faiss


@pytest.mark.parametrize("temperature", [0.07, 0.02, 0.0113, 0.01, 0.002])
def test_the_weighted_vote_equals_its_exact_value_at_any_temperature(temperature, exact_weighted_vote):
    """exp(sim / T) overflows float32 from sim / T > 88.7 (below T = 0.0113 for a neighbour at
    cosine 1): every class's vote became inf and the tie went to class 0 (60% where the exact vote
    gives 92%). Six noisy clusters, k = 20, against the exact vote; the answers must also differ
    from the unweighted majority somewhere, or the weights would not be tested."""
    generator = torch.Generator().manual_seed(7)
    centres = torch.randn(6, 16, generator=generator)
    labels, query_labels = (
        torch.randint(0, 6, (600,), generator=generator),
        torch.randint(0, 6, (300,), generator=generator),
    )
    bank = centres[labels] + 0.9 * torch.randn(600, 16, generator=generator)
    queries = centres[query_labels] + 0.9 * torch.randn(300, 16, generator=generator)
    bank[:50] = queries[:50]  # neighbours at cosine 1: the largest exponent there is
    expected = exact_weighted_vote(bank, labels, queries, 20, temperature, 6)
    got = knn_predict(bank, labels, queries, k=20, temperature=temperature, num_classes=6)
    assert torch.equal(got, expected)
    assert not torch.equal(got, knn_predict(bank, labels, queries, k=20, temperature=None, num_classes=6))
