"""The CUDA-graph training path (model.speed.cuda_graph): the step that runs forward, loss,
backward and the optimizer itself, inside Lightning's loop. On the CPU it runs eagerly, which
checks everything but the capture; on a CUDA machine the last test checks the capture too."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spectral_ssl.engine import ChannelsLast, GraphedStep
from spectral_ssl.methods import INTL


@pytest.fixture(scope="module")
def graph_args(tiny):
    """The tiny run for six steps with a short warm-up."""
    return [*tiny, "--trainer.max_steps=6", "--model.optimizer.warmup_epochs=0.2"]


def pretrain(args):
    from spectral_ssl.commands import pretrain  # here: the CUDA test at the end runs where jsonargparse may be missing

    return pretrain(args)


def run(graph_args, tmp_path, name, *args):
    pretrain([*graph_args, "--output_dir", str(tmp_path), "--run_name", name, *args])
    events = EventAccumulator(str(tmp_path / name))
    events.Reload()
    checkpoint = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint, {tag: [e.value for e in events.Scalars(tag)] for tag in ("train/loss", "train/lr")}


def assert_same(graphed, standard, exact=True):
    """Weights, buffers, optimizer state; bitwise when exact, else up to the float32 rounding of
    the learning rate (six steps grow it to ~1e-5 in the weights, a few % in Adam's moments)."""
    assert graphed["global_step"] == standard["global_step"]
    pairs = [(graphed["state_dict"], standard["state_dict"])] + [
        (mine, theirs)
        for mine, theirs in zip(
            graphed["optimizer_states"][0]["state"].values(), standard["optimizer_states"][0]["state"].values()
        )
    ]
    for mine, theirs in pairs:
        assert mine.keys() == theirs.keys()
        for key in mine:
            if exact:
                assert torch.equal(mine[key], theirs[key]), key
            elif key in graphed["state_dict"]:
                torch.testing.assert_close(mine[key], theirs[key], atol=2e-4, rtol=1e-3, msg=key)


@pytest.fixture
def float64_lr(monkeypatch):
    """The graphed path's device learning rate in float64, as exact as Lightning's Python float."""
    monkeypatch.setattr("spectral_ssl.engine.graphed.LR_DTYPE", torch.float64)


@pytest.mark.parametrize(
    "method",
    [
        [],
        ["--model=spectral_ssl.methods.BYOL", "--model.projector_dims=[64,32]", "--model.predictor_hidden_dims=[64]"],
        ["--model.optimizer.name=adam", "--model.optimizer.lr=0.002"],
    ],
    ids=["INTL", "BYOL", "INTL-adam"],
)
def test_graphed_path_trains_exactly_like_the_standard_path(tmp_path, method, float64_lr, graph_args):
    """Bitwise the same weights, optimizer state (momentum / Adam moments), EMA target, losses
    and learning-rate schedule as Lightning's own backward + optimizer step, step for step."""
    standard, standard_logs = run(graph_args, tmp_path, "standard", *method)
    graphed, graphed_logs = run(
        graph_args, tmp_path, "graphed", *method, "--speed.cuda_graph=true", "--speed.cuda_graph_warmup=2"
    )
    assert graphed["global_step"] == 6
    assert_same(graphed, standard)
    assert graphed_logs == standard_logs and len(graphed_logs["train/loss"]) == 6
    assert len(set(graphed_logs["train/lr"])) > 3  # the warm-up + cosine schedule moved
    assert torch.is_tensor(graphed["optimizer_states"][0]["param_groups"][0]["lr"])  # read by the captured step


def test_graphed_path_with_its_float32_learning_rate(tmp_path, graph_args):
    standard, standard_logs = run(graph_args, tmp_path, "standard")
    graphed, graphed_logs = run(graph_args, tmp_path, "graphed", "--speed.cuda_graph=true")
    assert graphed["optimizer_states"][0]["param_groups"][0]["lr"].dtype == torch.float32
    assert_same(graphed, standard, exact=False)
    for tag in ("train/loss", "train/lr"):
        assert graphed_logs[tag] == pytest.approx(standard_logs[tag], rel=1e-5)


def test_graphed_path_resumes_like_the_standard_path(tmp_path, float64_lr, graph_args):
    """Stopped after one epoch and resumed for a second, the graphed path ends where Lightning's
    own path does after the same two runs (which the killed-run test compares with a straight run)."""
    epochs = ["--trainer.max_steps=-1", "--trainer.limit_train_batches=0.15"]  # 3 steps an epoch
    ends = []
    for name, graph in (("standard", "false"), ("graphed", "true")):
        run(graph_args, tmp_path, name, f"--speed.cuda_graph={graph}", *epochs, "--trainer.max_epochs=1")
        ends.append(
            run(graph_args, tmp_path, name, f"--speed.cuda_graph={graph}", *epochs, "--trainer.max_epochs=2")[0]
        )
    standard, graphed = ends
    assert graphed["global_step"] == 6
    assert_same(graphed, standard)
    assert graphed["optimizer_states"][0]["param_groups"][0]["lr"].dtype == torch.float64  # a device tensor again


def test_graphed_path_stops_on_a_nonfinite_loss_before_saving(tmp_path, capsys, graph_args):
    with pytest.raises(SystemExit, match="became non-finite at step"):
        pretrain(
            [
                *graph_args,
                "--output_dir",
                str(tmp_path),
                "--run_name",
                "nan",
                "--speed.cuda_graph=true",
                "--model.optimizer.lr=1e12",
                "--trainer.log_every_n_steps=50",
                "--trainer.max_steps=30",
            ]
        )
    assert not (tmp_path / "nan" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--model.optimizer.name=lars"], "optimizer Lars"),
        (["--model=spectral_ssl.methods.WMSE", "--model.projector_dims=[64,16]", "--model.w_size=32"], "W-MSE"),
        (["--model=spectral_ssl.methods.SpectralTransform", "--model.axis=1", "--model.eps=1e-5"], "method=.eigh."),
        (["--trainer.accumulate_grad_batches=2"], "accumulate_grad_batches"),
        (["--trainer.gradient_clip_val=1.0"], "gradient_clip_val"),
    ],
)
def test_graphed_path_refuses_what_it_cannot_capture(tmp_path, args, problem, graph_args):
    with pytest.raises(SystemExit, match=f"error: speed.cuda_graph=true cannot be used with .*{problem}"):
        pretrain(
            [*graph_args, "--output_dir", str(tmp_path), "--run_name", "refused", "--speed.cuda_graph=true", *args]
        )


def test_graphed_step_warms_up_eagerly_and_clears_gradients():
    calls = []
    step = GraphedStep(lambda views: {"loss": views[0].sum() * 2}, lambda: calls.append("zero"), warmup_steps=1)
    out = step([torch.ones(3, requires_grad=True)])
    assert out["loss"].item() == 6 and not out["loss"].requires_grad
    assert calls == ["zero"] and step.eager_steps == 1 and not step.captured  # CPU: always eager
    with pytest.raises(ValueError, match="cuda_graph_warmup must be >= 1"):
        GraphedStep(lambda views: {}, lambda: None, warmup_steps=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
def test_captured_step_replays_the_eager_step_on_cuda(bf16):
    """Two copies of one model, trained on the same batches: eagerly, and captured after one
    warm-up step then replayed (including a batch of another size, which runs eagerly)."""
    torch.manual_seed(0)
    models = [
        INTL(
            backbone={"name": "resnet18", "cifar_stem": True, "width": 16},
            projector_dims=[128, 128],
            optimizer={"lr": 0.05},
        ).cuda()
        for _ in range(2)
    ]
    for model in models:
        ChannelsLast().setup(None, model, "fit")
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [
        torch.optim.SGD(m.parameters(), lr=torch.tensor(0.05, device="cuda"), momentum=0.9, fused=True) for m in models
    ]

    def make_step(model, optimizer):
        def step(views):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                parts = model.criterion(model.embed(views)[0])
            parts["loss"].backward()
            optimizer.step()
            return parts

        return step

    eager_step = make_step(models[0], optimizers[0])
    graphed = GraphedStep(
        make_step(models[1], optimizers[1]), lambda: optimizers[1].zero_grad(set_to_none=True), warmup_steps=1
    )
    generator = torch.Generator("cuda").manual_seed(0)
    for batch in (64, 64, 64, 64, 32, 64):
        views = [torch.randn(batch, 3, 32, 32, device="cuda", generator=generator) for _ in range(2)]
        optimizers[0].zero_grad(set_to_none=True)
        expected = eager_step(views)["loss"]
        got = graphed(views)["loss"]
        optimizers[0].param_groups[0]["lr"].mul_(0.5)  # a schedule: the graph must see the new value
        optimizers[1].param_groups[0]["lr"].mul_(0.5)
        torch.testing.assert_close(got, expected.detach(), atol=1e-4, rtol=1e-3)
    assert graphed.captured
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
