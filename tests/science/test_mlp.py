"""The theory networks against a forward pass written out by hand in float64."""

import math

import pytest
import torch

from spectral_ssl.science import mlp


def layer_norm(h, eps):
    centred = h - h.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.square().mean(-1, keepdim=True) + eps)


def rms_norm(h, eps):
    return h / torch.sqrt(h.square().mean(-1, keepdim=True) + eps)


def blocks(fn, size):
    return lambda h, eps: fn(h.reshape(*h.shape[:-1], -1, size), eps).reshape(h.shape)


ACTIVATIONS = {"identity": lambda h: h, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
CASES = [  # (mlp options, the norm written out, its default eps)
    ({"norm": "ln", "act": "identity"}, layer_norm, 1e-6),
    ({"norm": "pln", "act": "identity", "group_size": 2}, blocks(layer_norm, 2), 1e-5),
    ({"norm": "pln", "act": "identity", "group_size": 4}, blocks(layer_norm, 4), 1e-5),
    ({"norm": "pls", "act": "identity", "group_size": 1}, blocks(rms_norm, 1), 1e-5),
    ({"norm": "pls", "act": "identity", "group_size": 4}, blocks(rms_norm, 4), 1e-5),
    ({"norm": "rms", "act": "identity"}, rms_norm, 1e-6),
    ({"norm": "lng", "act": "identity", "groups": 2}, blocks(layer_norm, 4), 1e-5),  # 8 wide: 2 groups of 4
    ({"norm": "ln", "act": "relu"}, layer_norm, 1e-6),
    ({"norm": "none", "act": "tanh"}, None, 0),
    ({"norm": "none", "act": "sigmoid"}, None, 0),
    ({"norm": "none", "act": "relu"}, None, 0),
    ({"norm": "none", "act": "identity"}, None, 0),
]


@pytest.mark.parametrize("options, norm, eps", CASES, ids=lambda c: str(c) if isinstance(c, dict) else "")
@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_matches_the_forward_written_out(options, norm, eps, depth):
    model = mlp(5, 3, 8, depth=depth, **options).double()
    for module in model.modules():  # non-trivial affine parameters, so that they are checked too
        if hasattr(module, "weight") and module.weight is not None and not isinstance(module, torch.nn.Linear):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(16, 5, dtype=torch.float64)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    affines = [
        m for m in model.modules() if not isinstance(m, torch.nn.Linear) and getattr(m, "weight", None) is not None
    ]
    assert len(linears) == depth + 1 and len(affines) == (depth if norm else 0)
    h = x
    for i in range(depth):
        h = h @ linears[i].weight.T + linears[i].bias
        if norm is not None:
            h = norm(h, eps) * affines[i].weight + affines[i].bias
        h = ACTIVATIONS[options["act"]](h)
    expected = h @ linears[-1].weight.T + linears[-1].bias
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_pln_as_the_activation_and_eps_override():
    model = mlp(2, 1, 4, norm="none", act="pln", group_size=2, eps=0.0).double()
    assert [type(m).__name__ for m in model] == ["Linear", "ParallelLayerNorm", "Linear"] and model[1].eps == 0.0
    # a block of 2 without eps is the sign of the difference of its two entries: +-1
    hidden = model[1](model[0](torch.randn(32, 2, dtype=torch.float64)))
    torch.testing.assert_close(hidden.abs(), torch.ones_like(hidden), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"norm": "pln", "group_size": 3}, "do not divide 8"),
        ({"norm": "lng", "groups": 8}, "groups of at least 2"),
        ({"norm": "nope"}, "unknown norm"),
        ({"act": "swish"}, "unknown act"),
        ({"depth": 0}, "depth must be >= 1"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlp(2, 1, 8, **kwargs)


def test_linear_network_is_linear():
    model = mlp(3, 2, 16, depth=4, norm="none", act="identity").double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    zero = model(torch.zeros(1, 3, dtype=torch.float64))
    torch.testing.assert_close(model(x + y) - zero, (model(x) - zero) + (model(y) - zero))
    assert math.isclose(sum(p.numel() for p in model.parameters()), 3 * 16 + 16 + 3 * (16 * 16 + 16) + 16 * 2 + 2)
