"""The speed callbacks change how the step runs, never what it computes."""

import warnings

import pytest
import torch

from spectral_ssl.engine import ChannelsLast, Compile, SpeedOptions
from spectral_ssl.methods import INTL


def tiny_intl():
    return INTL(backbone={"cifar_stem": True, "width": 4}, projector_dims=[16, 16], trace_weight=0.05)


def failing_backend(graph_module, example_inputs):
    raise RuntimeError("no compiler here")


def test_channels_last_keeps_outputs_names_and_state():
    model = tiny_intl().eval()
    images = torch.randn(4, 3, 16, 16)
    expected, names = model(images), list(model.state_dict())
    callback = ChannelsLast()
    callback.setup(None, model, "fit")
    callback.setup(None, model, "validate")  # a second stage: nothing applied twice
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(model.backbone._forward_pre_hooks) == 1
    torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=1e-5)
    assert list(model.state_dict()) == names


def test_a_failed_compilation_stays_eager_with_one_warning():
    model = tiny_intl().eval()
    images = torch.randn(4, 3, 16, 16)
    expected = model(images)
    with pytest.warns(UserWarning, match="torch.compile is unavailable here.*no compiler here"):
        Compile(backend=failing_backend).setup(None, model, "fit")  # one warning for both submodules
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt at the first call, no second warning
        torch.testing.assert_close(model(images), expected)


def test_a_working_compiler_compiles_in_place():
    model = tiny_intl().eval()
    images = torch.randn(4, 3, 16, 16)
    expected, parameters = model.projector(model(images)), list(model.parameters())
    calls = []

    def eager_backend(graph_module, example_inputs):  # records each graph it is handed, runs it eagerly
        calls.append(graph_module)
        return graph_module.forward

    Compile(backend=eager_backend).setup(None, model, "fit")
    torch.testing.assert_close(model.projector(model(images)), expected)
    assert len(calls) >= 3  # the probe's graph, then the backbone's and the projector's
    assert list(model.parameters()) == parameters  # the same objects: optimizers and checkpoints unchanged


def test_cuda_graph_runs_on_one_device_only():
    options = SpeedOptions(cuda_graph=True)
    for trainer in ({"devices": 2}, {"num_nodes": 2}, {"strategy": "ddp"}):
        with pytest.raises(
            ValueError, match="speed.cuda_graph=true cannot be used with trainer.* it runs on one device"
        ):
            options.trainer_arguments(**trainer)
    chosen = options.trainer_arguments(accelerator="cpu")
    assert chosen["strategy"].root_device == torch.device("cpu") and chosen["devices"] == 1
    assert SpeedOptions().trainer_arguments(devices=8) == {}
