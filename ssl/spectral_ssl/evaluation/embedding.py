"""A picture of the embedding: held-out features as a 2-D map coloured by class (t-SNE, UMAP or
PCA), written as PNG + CSV and to TensorBoard (the figure, and the features in its embedding
projector with their labels and, for small images, thumbnails)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..plots import pyplot

MapMethod = Literal["tsne", "umap", "pca"]
THUMBNAIL_SIDE = 32
"""Images larger than this are shrunk to it for TensorBoard's projector (its sprite sheet holds
every thumbnail in one image of at most 8192 x 8192 pixels: 65,536 thumbnails of 32 px)."""


def embedding_map(features: Tensor, method: MapMethod = "tsne", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, 2) float64 coordinates of (N, D) ``features`` (N >= 3): scikit-learn's t-SNE (van der
    Maaten & Hinton, 2008; Barnes-Hut, PCA initialisation, ``perplexity`` capped at (N - 1) / 3),
    UMAP (McInnes et al., 2018; the ``umap-learn`` package, 15 neighbours, cosine metric) or the
    first two principal components. Deterministic for a given ``seed``. Cost: t-SNE grows as
    N log N (measured in docs/evaluation.md), PCA as N D^2. Raises ImportError naming the package
    when UMAP is asked for and ``umap-learn`` is not installed, ValueError below 3 points."""
    x = features.detach().double().cpu().numpy()
    if len(x) < 3:
        raise ValueError(f"an embedding map needs at least 3 points, not {len(x)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise ImportError("the UMAP map needs umap-learn (pip install umap-learn); or use method tsne") from error
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), metric="cosine", random_state=seed)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)
    if method != "tsne":
        raise ValueError(f"unknown embedding map {method!r}; choose tsne, umap or pca")
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=min(perplexity, (len(x) - 1) / 3),
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    return tsne.fit_transform(x).astype(np.float64)


def plot_embedding_map(coordinates: np.ndarray, labels: Tensor, title: str = "", class_names: Sequence[str] = ()):
    """A scatter plot of ``coordinates`` (N, 2), one colour per class of ``labels`` (N,), with a
    legend of the classes (``class_names`` where given). Returns the matplotlib Figure."""
    plt = pyplot()
    labels = torch.as_tensor(labels).cpu().numpy()
    classes = np.unique(labels)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    figure, axes = plt.subplots(figsize=(6, 5.5), dpi=100)
    size = max(1.0, min(12.0, 6000 / len(labels)))
    for i, label in enumerate(classes):
        chosen = labels == label
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        axes.scatter(*coordinates[chosen].T, s=size, color=colours(i % colours.N), label=name, linewidths=0)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=9)
    if len(classes) <= 20:
        axes.legend(fontsize=7, markerscale=max(1.0, 12 / size), loc="best", framealpha=0.7)
    figure.tight_layout()
    return figure


def write_embedding_map(
    coordinates: np.ndarray, labels: Tensor, indices: Tensor, out_dir: str | Path, figure
) -> tuple[Path, Path]:
    """``embedding_map.png`` (``figure``, then closed) and ``embedding_map.csv`` (one row per
    point: the image's index in its split, its label, x, y) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, path = out_dir / "embedding_map.png", out_dir / "embedding_map.csv"
    figure.savefig(png)
    pyplot().close(figure)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "x", "y"])
        for index, label, (x, y) in zip(indices.tolist(), torch.as_tensor(labels).tolist(), coordinates.tolist()):
            writer.writerow([index, label, repr(x), repr(y)])
    return png, path


def thumbnails(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised images (N, C, H, W) back to [0, 1], at most :data:`THUMBNAIL_SIDE` pixels a side:
    the ``label_img`` of TensorBoard's projector."""
    pixels = images.float() * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    if max(pixels.shape[-2:]) > THUMBNAIL_SIDE:
        pixels = F.interpolate(pixels, size=THUMBNAIL_SIDE, mode="bilinear", antialias=True, align_corners=False)
    return pixels.clamp(0, 1)


def publish_embedding_map(
    features: Tensor,
    labels: Tensor,
    indices: Tensor,
    *,
    method: MapMethod = "tsne",
    seed: int = 0,
    title: str = "",
    step: int = 0,
    class_names: Sequence[str] = (),
    experiment=None,
    out_dir: str | Path | None = None,
    images: Tensor | None = None,
    projector: bool = True,
) -> np.ndarray:
    """Maps ``features`` (N, D) of the images at ``indices`` with their ``labels``
    (:func:`embedding_map`), draws the map (:func:`plot_embedding_map`), and writes it: to
    ``out_dir`` as PNG + CSV (:func:`write_embedding_map`), and, when ``experiment`` is a
    TensorBoard SummaryWriter, as the figure ``embedding_map`` and, with ``projector``, the
    features in its embedding projector (labels as metadata, ``images``, [0, 1] thumbnails
    (N, C, h, w), as sprites) at ``step``. Returns the coordinates (N, 2)."""
    coordinates = embedding_map(features, method, seed)
    figure = plot_embedding_map(coordinates, labels, title, class_names)
    if hasattr(experiment, "add_figure"):
        experiment.add_figure("embedding_map", figure, global_step=step, close=False)
    if projector and hasattr(experiment, "add_embedding"):
        experiment.add_embedding(
            features.float().cpu(),
            metadata=[class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels.tolist()],
            label_img=images,
            global_step=step,
            tag="features",
        )
    if out_dir is not None:
        write_embedding_map(coordinates, labels, indices, out_dir, figure)
    else:
        pyplot().close(figure)
    return coordinates
