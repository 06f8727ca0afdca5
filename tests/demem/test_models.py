"""Tests for demem.models: shapes, norm choice, the pixel-space wrapper, and DP prerequisites."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from demem.models import (
    MODELS,
    NORM_LAYERS,
    Normalized,
    build_model,
    count_parameters,
    num_groups,
    wide_resnet,
)
from demem.registry import BUILTIN

ARCHS = ("small-cnn", "resnet18", "preact-resnet18", "wrn-34-10", "wrn-28-10")
WRNS = ("wrn-34-10", "wrn-28-10")
# (channels, side): Fashion-MNIST-like and CIFAR-like inputs.
SHAPES = ((1, 28), (3, 32))
MEAN, STD = 0.5, 0.25  # per-channel stats used in tests


def _build(arch: str, norm: str = "batch", channels: int = 3, side: int = 32) -> nn.Module:
    return build_model(
        arch,
        in_channels=channels,
        num_classes=10,
        image_size=side,
        mean=(MEAN,) * channels,
        std=(STD,) * channels,
        norm=norm,
    )


@functools.cache
def _cached(arch: str, norm: str, channels: int = 3, side: int = 32) -> nn.Module:
    """Shared read-only models: building the WRNs (~40 M parameters) is the slow part."""
    torch.manual_seed(0)
    return _build(arch, norm, channels, side).eval()


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models():
    yield
    _cached.cache_clear()  # the cached WRNs hold ~1 GB; release it for the rest of the suite


def _slow_if_wrn(arch: str) -> list:
    # Building a full-size WRN (36-46 M parameters) takes seconds each: those cases run with -m slow;
    # test_small_wrn_and_its_block_count keeps the WRN code path in the everyday suite.
    return [pytest.mark.slow] if arch in WRNS else []


def _archs():
    return [pytest.param(arch, marks=_slow_if_wrn(arch)) for arch in ARCHS]


def _cases():
    for arch in ARCHS:
        for norm in NORM_LAYERS:
            for channels, side in SHAPES:
                if arch in WRNS and channels == 1:
                    continue  # the WRN code path does not depend on C
                yield pytest.param(
                    arch, norm, channels, side, id=f"{arch}-{norm}-{channels}x{side}", marks=_slow_if_wrn(arch)
                )


def test_registry_holds_the_documented_archs():
    assert {n for n in MODELS.names() if MODELS.origin(n) == BUILTIN} == set(ARCHS)  # and plugins beside them
    assert NORM_LAYERS == ("batch", "group")


@pytest.mark.parametrize(("arch", "norm", "channels", "side"), list(_cases()))
def test_forward_shape_and_finite(arch, norm, channels, side):
    model = _cached(arch, norm, channels, side)
    x = torch.rand(2, channels, side, side)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in WRNS])
@pytest.mark.parametrize("norm", NORM_LAYERS)
def test_train_mode_forward_and_other_sizes(arch, norm):
    # Adaptive pooling makes the nets size-agnostic; 16 px is the smallest size we promise.
    torch.manual_seed(0)
    model = _build(arch, norm, channels=3, side=16).train()
    for side in (16, 20):
        assert model(torch.rand(2, 3, side, side)).shape == (2, 10)


@pytest.mark.parametrize("arch", _archs())
def test_group_norm_models_have_no_batchnorm(arch):
    group = _cached(arch, "group")
    batch = _cached(arch, "batch")
    assert not any(isinstance(m, _BatchNorm) for m in group.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in group.modules())
    assert any(isinstance(m, _BatchNorm) for m in batch.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in batch.modules())


@pytest.mark.parametrize("arch", _archs())
def test_group_norm_models_are_batch_independent(arch):
    # DP-SGD needs each sample's output to depend on that sample only, even in train mode.
    torch.manual_seed(1)
    model = _cached(arch, "group")
    model.train()
    try:
        x = torch.rand(3, 3, 32, 32)
        with torch.no_grad():
            together = model(x)
            alone = model(x[:1])
    finally:
        model.eval()
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", _archs())
def test_each_leaf_module_runs_once_and_relus_are_not_inplace(arch):
    # Opacus' per-sample gradient hooks assume each layer is used once per forward pass.
    model = _cached(arch, "group")
    calls: dict[str, int] = {}
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n, m in leaves]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    assert calls == {n: 1 for n, _ in leaves}
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_normalized_matches_manual_normalisation_exactly():
    torch.manual_seed(0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    model = build_model("small-cnn", in_channels=3, num_classes=10, image_size=32, mean=mean, std=std).eval()
    assert isinstance(model, Normalized)
    assert model.mean.shape == model.std.shape == (1, 3, 1, 1)
    x = torch.rand(4, 3, 32, 32)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(x), model.net((x - m) / s))
    # Stats are buffers: saved with the model, never trained.
    state = model.state_dict()
    assert "mean" in state and "std" in state
    assert count_parameters(model) == count_parameters(model.net)


def test_normalized_rejects_bad_stats():
    with pytest.raises(ValueError, match="std"):
        Normalized((0.5,), (0.0,), nn.Identity())
    with pytest.raises(ValueError, match="mean and std"):
        Normalized((0.5, 0.5), (0.5,), nn.Identity())


def test_unknown_arch_lists_known_names():
    with pytest.raises(ValueError) as err:
        _build("resnet1000")
    for name in ARCHS:
        assert name in str(err.value)


def test_unknown_norm_lists_known_norms():
    with pytest.raises(ValueError, match="batch, group"):
        _build("small-cnn", norm="layer")


@pytest.mark.parametrize("key", ["in_channels", "num_classes", "image_size"])
@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_sizes_rejected(key, bad):
    kwargs = {
        "in_channels": 1,
        "num_classes": 10,
        "image_size": 28,
        "mean": (0.5,),
        "std": (0.5,),
    }
    kwargs[key] = bad
    if key == "in_channels":
        kwargs["mean"] = kwargs["std"] = ()
    with pytest.raises(ValueError, match=key):
        build_model("small-cnn", **kwargs)


def test_mean_std_length_must_match_channels():
    with pytest.raises(ValueError, match="in_channels=3"):
        build_model(
            "small-cnn",
            in_channels=3,
            num_classes=10,
            image_size=32,
            mean=(0.5,),
            std=(0.5,),
        )


@pytest.mark.parametrize("depth", [4, 9, 27, 30, 35])
def test_wrn_depth_must_be_6n_plus_4(depth):
    with pytest.raises(ValueError, match="6n \\+ 4"):
        wide_resnet(depth, 2, in_channels=3, num_classes=10)


def test_wrn_rejects_bad_widen_and_dropout():
    with pytest.raises(ValueError, match="widen"):
        wide_resnet(10, 0, in_channels=3, num_classes=10)
    with pytest.raises(ValueError, match="dropout"):
        wide_resnet(10, 1, in_channels=3, num_classes=10, dropout=1.0)


def test_small_wrn_and_its_block_count():
    net = wide_resnet(16, 2, in_channels=3, num_classes=7, norm="group").eval()
    assert [len(stage) for stage in net.stages] == [2, 2, 2]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert not any(isinstance(m, nn.Dropout) for m in net.modules())
    with_dropout = wide_resnet(10, 1, in_channels=3, num_classes=7, dropout=0.3)
    assert any(isinstance(m, nn.Dropout) for m in with_dropout.modules())


@pytest.mark.parametrize(
    ("channels", "groups"),
    [(16, 16), (32, 32), (64, 32), (160, 32), (48, 24), (7, 7), (1, 1)],
)
def test_num_groups(channels, groups):
    assert num_groups(channels) == groups


def test_num_groups_divides_and_is_bounded():
    for channels in range(1, 700):
        g = num_groups(channels)
        assert channels % g == 0 and 1 <= g <= 32


def test_parameter_counts():
    # Small CNN must stay cheap on 2 CPU cores.
    assert count_parameters(_cached("small-cnn", "batch")) < 150_000
    assert count_parameters(_cached("small-cnn", "group", 1, 28)) < 150_000
    # Published sizes of the standard CIFAR-10 networks (3 channels, 10 classes) as an oracle for
    # the architecture; GroupNorm has the same affine parameter count as BatchNorm.
    for norm in NORM_LAYERS:
        assert count_parameters(_cached("resnet18", norm)) == 11_173_962
    frozen = _build("small-cnn").requires_grad_(False)
    assert count_parameters(frozen) == 0
    assert count_parameters(frozen, trainable_only=False) > 0


@pytest.mark.slow
def test_wrn_parameter_counts():
    # Published sizes of WRN-28-10 and WRN-34-10 on CIFAR-10, for both norms.
    for norm in NORM_LAYERS:
        assert count_parameters(_cached("wrn-28-10", norm)) == 36_479_194
        assert count_parameters(_cached("wrn-34-10", norm)) == 46_160_474


@pytest.mark.parametrize("norm", NORM_LAYERS)
def test_small_cnn_overfits_a_tiny_batch(norm):
    torch.manual_seed(0)
    model = _build("small-cnn", norm, channels=1, side=28).train()
    x = torch.rand(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == 1.0


@pytest.mark.parametrize("arch", _archs())
def test_gradient_flows_to_input(arch):
    model = _cached(arch, "batch")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.tensor([0, 1])
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_per_sample_gradients_with_torch_func_match_a_loop():
    # The route DP-SGD takes: vmap over per-sample grads of a GroupNorm model, checked against
    # one backward pass per sample.
    torch.manual_seed(0)
    model = _build("small-cnn", "group", channels=1, side=28).train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x = torch.rand(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))

    def loss_one(p, xi, yi):
        out = torch.func.functional_call(model, (p, buffers), (xi[None],))
        return F.cross_entropy(out, yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-4, atol=1e-6)
