import math

import pytest
import torch
from torch import nn

from robustlab.assemble import build_model as build
from robustlab.defenses.defective import DefectSpec, make_defective, make_mask, masks
from robustlab.models import available


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9, 1.0])
def test_neuron_mask_has_exact_zero_count(p: float) -> None:
    mask = make_mask((16, 7, 5), p, "neuron", seed=0)
    assert mask.shape == (16, 7, 5)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == math.floor((1 - p) * 16 * 7 * 5 + 0.5)


def test_channel_and_shared_modes() -> None:
    channel = make_mask((10, 4, 4), 0.3, "channel", seed=1)
    per_channel = channel.flatten(1)
    assert ((per_channel == 0).all(1) | (per_channel == 1).all(1)).all()  # whole channels
    assert int((per_channel == 0).all(1).sum()) == 7
    shared = make_mask((10, 4, 4), 0.25, "shared", seed=1)
    assert torch.equal(shared, shared[:1].expand_as(shared))  # same pattern in every channel
    assert int((shared[0] == 0).sum()) == 12


def test_masks_are_seeded() -> None:
    a = make_mask((8, 6, 6), 0.5, "neuron", seed=3)
    assert torch.equal(a, make_mask((8, 6, 6), 0.5, "neuron", seed=3))
    assert not torch.equal(a, make_mask((8, 6, 6), 0.5, "neuron", seed=4))
    m1 = dict(masks(build("resnet8", defect=DefectSpec(0.5, seed=0))))
    m2 = dict(masks(build("resnet8", defect=DefectSpec(0.5, seed=0))))
    m3 = dict(masks(build("resnet8", defect=DefectSpec(0.5, seed=1))))
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert not all(torch.equal(m1[k], m3[k]) for k in m1)
    # different layers get different patterns from the same spec seed
    first, second = list(m1.values())[1:3]
    assert not torch.equal(first, second)


def test_spec_parse_and_round_trip() -> None:
    spec = DefectSpec.parse("0,1,2:0.5:channel:x2", seed=7)
    assert spec == DefectSpec(0.5, (0, 1, 2), "channel", 2, 7)
    assert DefectSpec.parse(str(spec), seed=7) == spec
    assert DefectSpec.from_dict(spec.to_dict()) == spec
    assert str(DefectSpec.parse("bottom:0.1")) == "bottom:0.1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("bottom", "must look like"),
        ("bottom:abc", "not a number"),
        ("bottom:1.5", r"\(0, 1\]"),
        ("bottom:0.1:weird", "unknown defect mode"),
        ("middle:0.1", "must be bottom, top"),
    ],
)
def test_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DefectSpec.parse(text)


def _modules_of(names: list[str]) -> set[int]:
    return {int(n.split(".")[1]) for n in names}


@pytest.mark.parametrize("arch", available())
def test_bottom_and_top_placement(arch: str) -> None:
    model = build(arch, in_channels=1, image_size=28, defect=DefectSpec(0.5, "bottom"))
    names = [n for n, _ in masks(model)]
    bottom_modules = {i for b in model.bottom for i in model.stages[b]}
    assert names and _modules_of(names) <= bottom_modules
    # every BatchNorm of the bottom blocks is masked, and nothing else
    assert names == model.block_layers(model.bottom)
    top = build(arch, in_channels=1, image_size=28, defect=DefectSpec(0.5, "top"))
    above = {i for b in range(max(top.bottom) + 1, top.num_blocks) for i in top.stages[b]}
    assert _modules_of([n for n, _ in masks(top)]) <= (above or set(top.stages[-1]))


def test_resnet18_bottom_is_the_papers_ten_layers() -> None:
    # the released code's "012" masks: stem, stage 1 (4 layers), stage 2 (5, with the shortcut)
    shapes = [tuple(m.shape) for _, m in masks(build("resnet18", defect=DefectSpec(0.1)))]
    assert shapes == [(64, 32, 32)] * 5 + [(128, 16, 16)] * 5
    top = [n for n, _ in masks(build("resnet18", defect=DefectSpec(0.1, "top")))]
    assert {n.split(".")[1] for n in top} == {"5", "6", "7", "8"}  # stages 3 and 4 ("34")
    vgg = build("vgg19", defect=DefectSpec(0.1))
    assert vgg.bottom == (0, 1) and len(masks(vgg)) == 4  # "vgg_drop_01": four convs


def test_projection_shortcut_inside_defective_block_is_masked() -> None:
    model = build("resnet18", defect=DefectSpec(0.5, (2,)))  # stage 2 = modules 3 and 4
    assert "blocks.3.shortcut.bn" in dict(masks(model))
    assert all(n.split(".")[1] in ("3", "4") for n in dict(masks(model)))


def test_masked_outputs_are_zero_in_train_and_eval() -> None:
    model = build("resnet8", defect=DefectSpec(0.3, "bottom"))
    seen = {}
    bn = model.blocks[0].unit.bn
    # a hook registered after the mask sees the masked output
    bn.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out.detach()))
    zeros = bn.defect_mask == 0
    for mode in (True, False):
        model.train(mode)
        model(torch.rand(4, 3, 32, 32))
        assert (seen["out"][:, zeros] == 0).all()
        assert (seen["out"][:, ~zeros] != 0).float().mean() > 0.9


def test_masks_are_buffers_saved_and_not_trained() -> None:
    model = build("resnet8", defect=DefectSpec(0.5))
    state = model.state_dict()
    assert "blocks.0.unit.bn.defect_mask" in state
    assert not any("defect_mask" in n for n, _ in model.named_parameters())
    before = state["blocks.0.unit.bn.defect_mask"].clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    opt.step()
    assert torch.equal(model.blocks[0].unit.bn.defect_mask, before)


def test_widen_multiplies_defective_block_channels() -> None:
    plain = build("resnet8", defect=DefectSpec(0.5))
    wide = build("resnet8", defect=DefectSpec(0.5, widen=2))
    assert wide.blocks[0].unit.conv.out_channels == 2 * plain.blocks[0].unit.conv.out_channels
    assert wide.blocks[3].unit1.conv.out_channels == plain.blocks[3].unit1.conv.out_channels
    assert wide(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    deep = build("resnet18", defect=DefectSpec(0.5, widen=2))  # every module of stages 1-2
    assert [deep.blocks[i].unit2.conv.out_channels for i in (1, 2, 3, 4, 5)] == [
        128,
        128,
        256,
        256,
        256,
    ]


def test_make_defective_on_a_user_model() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.ReLU(),
                nn.Conv2d(4, 8, 3, padding=1),
                nn.BatchNorm2d(8),
                nn.ReLU(),
            )
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).mean((2, 3)))

    model = make_defective(
        Tiny(), DefectSpec(0.5), layers=["features.1"], example_input=torch.rand(1, 1, 6, 6)
    )
    found = dict(masks(model))
    assert list(found) == ["features.1"] and found["features.1"].shape == (4, 6, 6)
    assert int((found["features.1"] == 0).sum()) == 72
    with pytest.raises(ValueError, match="no layer matches"):
        make_defective(
            Tiny(), DefectSpec(0.5), layers=["nothing*"], example_input=torch.rand(1, 1, 6, 6)
        )
    with pytest.raises(ValueError, match="needs layers"):
        make_defective(Tiny(), DefectSpec(0.5), example_input=torch.rand(1, 1, 6, 6))
    with pytest.raises(RuntimeError, match="build the model for the input size"):
        model(torch.rand(1, 1, 8, 8))
