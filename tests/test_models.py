import copy

import pytest
import torch

from robustlab.assemble import ModelConfig, create
from robustlab.assemble import build_model as build
from robustlab.defenses.baselines import DropBlock2d
from robustlab.defenses.defective import DefectSpec
from robustlab.models import available


@pytest.mark.parametrize("arch", available())
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_forward_shapes(arch: str, channels: int, size: int) -> None:
    model = build(
        arch, num_classes=7, in_channels=channels, image_size=size, defect=DefectSpec(0.5)
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_registry_lists_the_papers_architectures() -> None:
    names = set(available())
    assert {"resnet18", "resnet50", "densenet121", "senet18", "vgg19", "wrn32_4"} <= names
    assert {"resnet8", "resnet10", "lenet"} <= names
    with pytest.raises(ValueError, match="unknown architecture"):
        build("resnet1000")


def test_block_zero_is_the_stem_and_resnet18_has_five_blocks() -> None:
    model = build("resnet18")
    assert model.num_blocks == 5 and len(model.blocks) == 9  # stem + 4 stages of 2
    assert model.stages == [[0], [1, 2], [3, 4], [5, 6], [7, 8]]
    assert model.blocks[0].unit.conv.in_channels == 3
    assert build("densenet121").num_blocks == 5 and build("vgg19").num_blocks == 5


def test_normalization_is_inside_the_model() -> None:
    model = build("lenet", in_channels=1, mean=(0.25,), std=(0.5,)).eval()
    x = torch.full((1, 1, 32, 32), 0.25)
    assert torch.allclose(model.normalize(x), torch.zeros_like(x))


def test_regularizers_act_only_in_training() -> None:
    model = build("resnet8", regularizer="dropblock", regularizer_block=2, regularizer_keep=0.5)
    assert isinstance(model.regularizers["2"], DropBlock2d)
    deep = build("resnet18", regularizer="dropout2d")  # after block 3 = stage 3's last module
    assert list(deep.regularizers) == ["6"]
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


def test_dropblock_drops_about_the_right_fraction() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 8, 16, 16)
    out = DropBlock2d(keep_prob=0.9, block_size=3).train()(x)
    kept = (out > 0).float().mean().item()
    assert 0.85 < kept < 0.95


def test_model_config_round_trip() -> None:
    config = ModelConfig(
        "resnet8",
        10,
        1,
        28,
        (0.3,),
        (0.4,),
        DefectSpec(0.1, (0, 1)),
        "dropout2d",
        options={"width": 8},
    )
    again = ModelConfig.from_dict(config.to_dict(), origin="test")
    assert again == config
    torch.manual_seed(0)
    a = create(config)
    torch.manual_seed(0)
    b = create(again)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_thermometer_encoding_bits() -> None:
    from robustlab.defenses.baselines import ThermometerEncoding

    enc = ThermometerEncoding(4)
    x = torch.tensor([0.0, 0.3, 0.5, 1.0]).view(1, 1, 1, 4)
    bits = enc(x)[0, :, 0].T.tolist()  # one row of 4 levels per pixel
    assert bits == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    model = build("resnet8", in_channels=3, thermometer=16, mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert model.blocks[0].unit.conv.in_channels == 48
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model.eval()(x).sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0  # gradient masking
    config = ModelConfig("resnet8", thermometer=16)
    assert create(ModelConfig.from_dict(config.to_dict(), origin="test")).encode.levels == 16


def test_whitebox_attack_on_thermometer_model_sees_zero_gradient() -> None:
    from robustlab.attacks import PGD

    model = build("lenet", in_channels=1, image_size=12, thermometer=8, width=4).eval()
    x = torch.rand(4, 1, 12, 12)
    adv = PGD(model, eps=8 / 255, step=2 / 255, steps=3)(x, model(x).argmax(1))
    assert torch.equal(adv, x)  # sign(0) = 0: no step is ever taken


def test_thermometer_declares_bpda_and_its_view_has_gradients() -> None:
    from robustlab.attacks import PGD
    from robustlab.defenses.base import attack_view, surface_of

    model = build("lenet", in_channels=1, image_size=12, thermometer=8, width=4).eval()
    assert surface_of(model).kind == "bpda"
    view = attack_view(model)
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(view(x), model(x), rtol=0, atol=0)  # the same bits forward
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(view(xg).logsumexp(1).sum(), xg)
    assert grad.abs().sum() > 0  # the ramps pass a gradient
    assert not model.encode.bpda and view.encode is not model.encode  # the model is untouched
    y = model(x).argmax(1)
    assert not torch.equal(PGD(view, eps=8 / 255, step=2 / 255, steps=3)(x, y), x)


def _is_channels_last(model: torch.nn.Module) -> bool:
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return bool(convs) and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_place_lays_networks_out_channels_last_on_the_cpu_without_changing_results() -> None:
    from robustlab.models.base import channels_last_pays, place

    assert channels_last_pays("cpu") and not channels_last_pays("cuda")
    torch.manual_seed(0)
    plain = build("resnet8", 10, 3, image_size=16, width=4).double().eval()
    torch.manual_seed(0)
    placed = place(build("resnet8", 10, 3, image_size=16, width=4).double(), "cpu").eval()
    assert _is_channels_last(placed) and not _is_channels_last(plain)
    assert not _is_channels_last(place(plain, "cpu", channels_last=False))
    assert not _is_channels_last(place(copy.deepcopy(placed), "cpu", channels_last=False))
    # in float64 the layout is invisible: the same logits and the same input gradient
    x = torch.rand(5, 3, 16, 16, dtype=torch.float64)
    grads = []
    for model in (plain, placed):
        point = x.clone().requires_grad_(True)
        logits = model(point)
        grads.append(torch.autograd.grad(logits[:, 0].sum(), point)[0])
        assert torch.allclose(logits, plain(x), rtol=0, atol=1e-12)
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-12)


def test_place_keeps_a_network_with_3d_convolutions_as_built() -> None:
    from robustlab.models.base import place

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    placed = place(net, "cpu")  # channels-last is a 4-D format: no error, no change
    assert placed[0].weight.is_contiguous()


# --- BatchNorm folded into the convolution in eval mode (models.base.ConvBN) -----------------


def _unit(bias: bool = False) -> torch.nn.Module:
    """A float64 ConvBN with BN statistics and affine terms far from their defaults."""
    from robustlab.models.base import conv_bn

    torch.manual_seed(0)
    unit = conv_bn(3, 5, 3, stride=2).double()
    if bias:
        unit.conv.bias = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    with torch.no_grad():
        unit.bn.running_mean.normal_()
        unit.bn.running_var.uniform_(0.5, 3.0)
        unit.bn.weight.normal_()
        unit.bn.bias.normal_()
    return unit.eval()


def _two_modules(unit: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = unit.bn(unit.conv(x))
    return out


def _bn_calls(unit: torch.nn.Module, x: torch.Tensor) -> int:
    """How often BatchNorm's own forward runs in one call of ``unit``."""
    calls = []
    original = type(unit.bn).forward
    unit.bn.forward = lambda t: calls.append(1) or original(unit.bn, t)  # type: ignore[method-assign]
    try:
        unit(x)
    finally:
        del unit.bn.forward
    return len(calls)


@pytest.mark.parametrize("bias", [False, True])
def test_conv_bn_folds_in_eval_mode_with_the_two_modules_result_and_gradients(bias: bool) -> None:
    unit = _unit(bias)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    assert _bn_calls(unit, x) == 0  # folded: BatchNorm's pass is not made
    assert torch.allclose(unit(x), _two_modules(unit, x), rtol=0, atol=1e-12)
    # an attack's input gradient, weights frozen (the cached folded weights)
    unit.requires_grad_(False)
    point = x.clone().requires_grad_(True)
    (folded,) = torch.autograd.grad(unit(point).square().sum(), point)
    (plain,) = torch.autograd.grad(_two_modules(unit, point).square().sum(), point)
    assert torch.allclose(folded, plain, rtol=0, atol=1e-12)
    # weight gradients in eval mode (fine-tuning with frozen statistics): folded per call
    unit.requires_grad_(True)
    params = [p for p in unit.parameters()]
    folded_grads = torch.autograd.grad(unit(x).square().sum(), params)
    plain_grads = torch.autograd.grad(_two_modules(unit, x).square().sum(), params)
    for a, b in zip(folded_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_conv_bn_trains_as_the_two_modules_bit_for_bit() -> None:
    unit = _unit().train()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    reference = copy.deepcopy(unit)
    assert _bn_calls(copy.deepcopy(unit), x) == 1
    assert torch.equal(unit(x), _two_modules(reference, x))  # batch statistics, as before
    assert torch.equal(unit.bn.running_mean, reference.bn.running_mean)


def test_conv_bn_refolds_whenever_its_weights_change() -> None:
    unit = _unit()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        unit(x)  # the folded weights are now kept
        unit.conv.weight.mul_(2.0)  # in place, as an optimiser step (no .eval() between)
        assert torch.allclose(unit(x), _two_modules(unit, x), rtol=0, atol=1e-12)
        unit.bn.running_var.add_(1.0)
        assert torch.allclose(unit(x), _two_modules(unit, x), rtol=0, atol=1e-12)
        other = _unit(bias=False)
        other.bn.weight.mul_(-1)
        unit.load_state_dict(other.state_dict())
        assert torch.allclose(unit(x), _two_modules(other, x), rtol=0, atol=1e-12)
        unit.bn.eps = 0.5
        assert torch.allclose(unit(x), _two_modules(unit, x), rtol=0, atol=1e-12)
        unit.conv.weight = torch.nn.Parameter(torch.randn_like(unit.conv.weight))  # replaced
        assert torch.allclose(unit(x), _two_modules(unit, x), rtol=0, atol=1e-12)
        single = copy.deepcopy(unit).float()  # another dtype: refolded, in float32
        assert single(x.float()).dtype == torch.float32
        copied = copy.deepcopy(unit)  # a copy refolds from its own weights
        copied.conv.weight.zero_()
        assert torch.allclose(copied(x), _two_modules(copied, x), rtol=0, atol=1e-12)
        assert torch.allclose(unit(x), _two_modules(unit, x), rtol=0, atol=1e-12)


def test_conv_bn_with_a_hook_runs_its_two_modules() -> None:
    unit = _unit()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    seen: list[torch.Tensor] = []
    handle = unit.conv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    assert _bn_calls(unit, x) == 1  # a probe of the convolution's output sees it
    assert torch.equal(seen[0], unit.conv(x))
    handle.remove()
    mask = torch.zeros(1, 5, 1, 1, dtype=torch.float64)
    unit.bn.register_forward_hook(lambda _m, _i, out: out * mask)  # a defect's mask on BN
    assert torch.equal(unit(x), torch.zeros_like(unit(x)))
    assert list(unit.state_dict()) == ["conv.weight", *(f"bn.{k}" for k in _BN_KEYS)]


_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
