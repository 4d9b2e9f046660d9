"""A width-3 LN-Net that classifies m points with any labels, built layer by layer.

The claim (Ni et al., "On the Nonlinearity of Layer Normalization", ICML 2024, abstract): an LN-Net
(linear maps and LayerNorms in turn) with 3 neurons per layer and O(m) LN layers classifies m
samples with any label assignment. The paper's own construction was not reachable here (only its
abstract); this one is written from two facts, and uses 1 + (m - K) LN layers for K classes:

1. LN on R^3 (eps = 0, no affine) is RMS scaling on the plane orthogonal to (1, 1, 1) (PLN paper,
   Lemma 4.4): with B (3 x 2) an orthonormal basis of that plane, LN(B v) = sqrt(3) B v / ||v||.
   So a width-3 LN-Net is a walk on the unit circle, u -> (A u + c) / ||A u + c||, each step one
   LN layer whose linear map is B A B^T / sqrt(3) with bias B c.
2. A step with A = I and c on the line through two circle points p, q, outside the segment [p, q],
   sends p and q to the same point ((p - c) and (q - c) point the same way), and keeps every other
   point apart (a line meets the circle at most twice; c is chosen off the lines through other
   pairs). One LN layer merges two points of the same label.

The first LN layer puts the points on the circle in the order of a generic projection w^T x
(standardized t -> (t, 1) / ||(t, 1)||); then each layer merges one same-label pair, chosen with
its centre c among a few candidates to keep the smallest angle between the remaining points as
large as possible, until one point per class is left; the read-out scores class k by p_k^T u,
largest exactly at its own point. In exact arithmetic this classifies every point. The
construction carries every point's state and every weight in 60-digit arithmetic (mpmath), since
each merge shrinks some of the remaining angles (to 1e-10 rad among 128 points) and a float64
rounding of a centre would undo the merges after it; :func:`verify` runs the network with those
weights in extended precision, or rounded to float64 (where it holds for fewer points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

DIGITS = 60
"""Decimal digits of the arithmetic the construction is carried out in (mpmath)."""


def _basis():
    """B: an orthonormal basis (columns, 3 x 2) of the plane of R^3 orthogonal to (1, 1, 1)."""
    import mpmath

    r2, r6 = mpmath.sqrt(2), mpmath.sqrt(6)
    return mpmath.matrix([[1 / r2, 1 / r6], [-1 / r2, 1 / r6], [0, -2 / r6]])


@dataclass
class LNNetConstruction:
    """The constructed network: ``layers`` [(W (3, d_in), b (3,)), ...] as mpmath matrices (its
    exact weights, to ``DIGITS`` digits), each followed by LN(3) with eps = 0 and no affine;
    ``readout`` (K, 3) without bias. ``ln_layers`` = 1 + merges."""

    layers: list[tuple[object, object]]
    readout: object
    min_angle: float  # the smallest angle (radians) between distinct points before the read-out

    @property
    def ln_layers(self) -> int:
        return len(self.layers)

    def module(self) -> nn.Sequential:
        """The network as torch modules, its weights rounded to float64: Linear -> LayerNorm(3, eps=0,
        no affine) ... -> Linear."""
        modules: list[nn.Module] = []
        for weight, bias in self.layers:
            linear = nn.Linear(weight.cols, 3).double()
            linear.weight.data, linear.bias.data = _tensor(weight), _tensor(bias).flatten()
            modules += [linear, nn.LayerNorm(3, eps=0.0, elementwise_affine=False).double()]
        readout = nn.Linear(3, self.readout.rows, bias=False).double()
        readout.weight.data = _tensor(self.readout)
        return nn.Sequential(*modules, readout)


def _tensor(matrix) -> Tensor:
    return torch.tensor(
        [[float(matrix[i, j]) for j in range(matrix.cols)] for i in range(matrix.rows)], dtype=torch.float64
    )


def _angles(u: np.ndarray) -> np.ndarray:
    return np.arctan2(u[:, 1], u[:, 0])


def _min_gap(u: np.ndarray) -> float:
    angles = np.sort(_angles(u))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * math.pi]))
    return float(gaps.min()) if len(u) > 1 else math.pi


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def construct(points: Tensor, labels: Tensor, seed: int = 0) -> LNNetConstruction:
    """Builds the width-3 LN-Net for ``points`` (m, d) and integer ``labels`` (m,) in [0, K), in
    ``DIGITS``-digit arithmetic: every point's state on the circle is carried to that precision,
    each merge's centre computed from those states (the choice among candidates is made on their
    float64 roundings). Raises ValueError when two points meet along the projection (duplicate
    points, or a projection that ties them: another ``seed`` draws another). :func:`verify`
    checks the result."""
    import mpmath

    with mpmath.workdps(DIGITS):
        basis = _basis()
        x = points.double().numpy()
        y = labels.long().numpy()
        classes = int(y.max()) + 1
        w = np.random.default_rng(seed).standard_normal(x.shape[1])
        t64 = x @ w
        if len(np.unique(t64)) < len(t64):
            raise ValueError(
                "two points meet along the projection: remove duplicate points, or try another seed if they differ"
            )
        a, b0 = 1 / t64.std(), -t64.mean() / t64.std()
        first = basis * mpmath.matrix([list(a * w), [0] * len(w)])
        layers = [(first, basis * mpmath.matrix([b0, 1]))]
        state = []  # exact (x, y) of each distinct point on the unit circle
        for row in x:
            v = (mpmath.fsum(mpmath.mpf(float(r)) * mpmath.mpf(float(c)) for r, c in zip(row, a * w)) + b0, 1)
            norm = mpmath.sqrt(v[0] ** 2 + v[1] ** 2)
            state.append((v[0] / norm, v[1] / norm))
        point_label = y.copy()
        step = basis * basis.T / mpmath.sqrt(3)  # maps LN's output sqrt(3) B u back to B u
        while len(state) > len(np.unique(point_label)):
            rounded = np.array([[float(p[0]), float(p[1])] for p in state])
            best = None
            for i, j in _same_label_pairs(rounded, point_label):
                for s in (0.05, 0.2, 1.0):
                    for near, far in ((i, j), (j, i)):  # c beyond p (near) on the line through p and q
                        c = rounded[near] + s * (rounded[near] - rounded[far])
                        moved = _normalize(rounded - c)
                        gap = _min_gap(np.delete(moved, j, 0))
                        if best is None or gap > best[0]:
                            best = (gap, i, j, near, far, s)
            _, i, j, near, far, s = best
            p, q = state[near], state[far]
            c = (p[0] + s * (p[0] - q[0]), p[1] + s * (p[1] - q[1]))
            layers.append((step, basis * mpmath.matrix([-c[0], -c[1]])))
            moved = []
            for u in state:
                d = (u[0] - c[0], u[1] - c[1])
                norm = mpmath.sqrt(d[0] ** 2 + d[1] ** 2)
                moved.append((d[0] / norm, d[1] / norm))
            state = moved[:j] + moved[j + 1 :]  # q now sits on p
            point_label = np.delete(point_label, j)
        rows = [[0, 0] for _ in range(classes)]
        for label, u in zip(point_label, state, strict=True):
            rows[label] = [u[0], u[1]]
        readout = mpmath.matrix(rows) * basis.T / mpmath.sqrt(3)
        rounded = np.array([[float(p[0]), float(p[1])] for p in state])
        return LNNetConstruction(layers, readout, _min_gap(rounded))


def _same_label_pairs(u: np.ndarray, label: np.ndarray) -> list[tuple[int, int]]:
    """Candidate merges: pairs of same-label points that are neighbours in angle among their
    class (merging close points disturbs the others least)."""
    pairs = []
    for k in np.unique(label):
        members = np.flatnonzero(label == k)
        if len(members) < 2:
            continue
        order = members[np.argsort(_angles(u[members]))]
        pairs += [(int(min(a, b)), int(max(a, b))) for a, b in zip(order, np.roll(order, -1), strict=True) if a != b]
    return list(dict.fromkeys(pairs))


def verify(network: LNNetConstruction, points: Tensor, labels: Tensor, digits: int | None = None) -> float:
    """Accuracy in [0, 1] of ``network`` on (``points``, ``labels``): in float64 (``digits`` None:
    :meth:`LNNetConstruction.module`, the weights rounded to float64) or with its exact weights in
    ``digits``-digit arithmetic (mpmath: every linear map and LN(z) = (z - mean z) /
    sqrt(mean (z - mean z)^2) evaluated as written)."""
    if digits is None:
        with torch.no_grad():
            return (network.module()(points.double()).argmax(1) == labels).double().mean().item()
    import mpmath

    with mpmath.workdps(digits):
        correct = 0
        for x, label in zip(points.double().tolist(), labels.tolist(), strict=True):
            z = mpmath.matrix(x)
            for weight, bias in network.layers:
                z = weight * z + bias
                centred = z - mpmath.matrix([sum(z) / 3] * 3)
                z = centred / mpmath.sqrt(sum(v**2 for v in centred) / 3)
            scores = list(network.readout * z)
            correct += scores.index(max(scores)) == label
    return correct / len(labels)
