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
