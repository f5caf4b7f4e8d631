import numpy as np
import pytest
import torch
from torch import nn

from robustlab.attacks import AdversarialSet
from robustlab.evaluation import Rate, transfer, wilson_interval


def test_wilson_interval_known_values() -> None:
    # 8/10 -> [0.490, 0.943] (Wilson 1927; e.g. Newcombe 1998, table I)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0 < high < 0.2
    assert str(Rate(1, 4)).startswith("25.0% [")


class Lookup(nn.Module):
    """Predicts a fixed label per image, keyed by the image's first pixel value (×255)."""

    def __init__(self, table: dict[int, int]) -> None:
        super().__init__()
        self.table = table
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = (x[:, 0, 0, 0] * 255).round().long().tolist()
        return torch.nn.functional.one_hot(torch.tensor([self.table[k] for k in keys]), 3).float()


def _set(adv: np.ndarray, labels, adv_pred) -> AdversarialSet:
    n = len(labels)
    return AdversarialSet(
        images=adv,
        labels=np.array(labels),
        indices=np.arange(n),
        clean_pred=np.array(labels),
        adv_pred=np.array(adv_pred),
        linf=np.zeros(n),
        l2=np.zeros(n),
        config={},
    )


def test_filtering_rules_counted_by_hand() -> None:
    # clean images keyed 0..4, adversarial ones 10..14; labels 0,1,2,0,1
    clean = torch.arange(5).float().view(5, 1, 1, 1).expand(5, 1, 2, 2) / 255
    adv = (np.arange(10, 15).reshape(5, 1, 1, 1) * np.ones((5, 1, 2, 2))).astype(np.uint8)
    labels = [0, 1, 2, 0, 1]
    source_adv_pred = [1, 0, 2, 2, 1]  # differs from the label on 0, 1, 3: the source was fooled
    target = Lookup({0: 0, 1: 1, 2: 2, 3: 1, 4: 1, 10: 0, 11: 2, 12: 2, 13: 0, 14: 0})
    result = transfer(target, _set(adv, labels, source_adv_pred), clean)
    # counted: clean-correct on target (0, 1, 2, 4) AND fooled the source (0, 1, 3) -> {0, 1}
    assert (result.defense_rate.hits, result.defense_rate.n) == (1, 2)  # only 0 survives
    assert (result.accuracy.hits, result.accuracy.n) == (3, 5)  # examples 0, 2 and 3
    assert (result.clean_accuracy.hits, result.clean_accuracy.n) == (4, 5)


def test_target_equal_to_source_scores_zero_and_constant_model_is_immune() -> None:
    torch.manual_seed(0)
    source = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    clean = torch.rand(64, 1, 4, 4)
    labels = source(clean).argmax(1)
    from robustlab.attacks import PGD

    adv = PGD(source, eps=0.5, step=0.05, steps=20)(clean, labels)
    adv_set = AdversarialSet(
        images=adv.numpy().astype(np.float32),
        labels=labels.numpy(),
        indices=np.arange(64),
        clean_pred=labels.numpy(),
        adv_pred=source(adv).argmax(1).numpy(),
        linf=np.zeros(64),
        l2=np.zeros(64),
        config={},
    )
    assert adv_set.fooled_source.sum() > 10
    same = transfer(source, adv_set, clean)
    assert same.defense_rate.hits == 0 and same.defense_rate.n == adv_set.fooled_source.sum()

    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([0.0, 1.0, 0.0]).expand(len(x), 3)

    immune = transfer(Constant(), adv_set, clean)
    assert immune.defense_rate.value == 1.0 and immune.defense_rate.n > 0


def test_patch_shuffle_permutes_whole_patches() -> None:
    from robustlab.evaluation.measures import patch_shuffle

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = patch_shuffle(x, 2, torch.Generator().manual_seed(0))
    assert sorted(out.flatten().tolist()) == sorted(x.flatten().tolist())  # nothing lost
    patches_in = {
        tuple(x[0, :, r : r + 4, c : c + 4].flatten().tolist()) for r in (0, 4) for c in (0, 4)
    }
    patches_out = {
        tuple(out[0, :, r : r + 4, c : c + 4].flatten().tolist()) for r in (0, 4) for c in (0, 4)
    }
    assert patches_in == patches_out  # the same 4×4 patches, moved as wholes
    again = patch_shuffle(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(patch_shuffle(x, 1, torch.Generator().manual_seed(0)), x)


def test_noise_curve_and_shuffle_use_images_all_models_get_right() -> None:
    from robustlab.evaluation.measures import noise_curve, shuffle_probe

    class Mean(nn.Module):  # class = whether the mean pixel is above 0.5: shape-blind
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.mean((1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], 1)

    class Corner(nn.Module):  # class from the top-left pixel only: destroyed by shuffling
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, 0, 0, 0]
            return torch.stack([0.5 - v, v - 0.5], 1)

    x = torch.rand(200, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    models = {"mean": Mean(), "corner": Corner()}
    probe = shuffle_probe(models, x, y, ks=(2, 4))
    n = probe["mean"][2].n
    assert 0 < n < 200 and probe["corner"][2].n == n  # only images both get right
    assert probe["mean"][2].value == 1.0  # a permutation keeps the mean
    assert probe["corner"][4].value < 0.9
    curve = noise_curve(models, x, y, sigmas=(0, 64))
    assert curve["mean"][0].value == 1.0 and curve["corner"][0].value == 1.0
    assert curve["corner"][64].value < 0.9


def test_whitebox_and_decision_score() -> None:
    from robustlab.evaluation.measures import decision_score, whitebox_accuracy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(32, 1, 4, 4)
    y = model(x).argmax(1)
    assert (
        whitebox_accuracy(
            model, x, y, attack="pgd", params={"eps": 0.0, "step": 0.01, "steps": 1}
        ).value
        == 1.0
    )
    assert (
        whitebox_accuracy(
            model, x, y, attack="pgd", params={"eps": 0.5, "step": 0.05, "steps": 20}
        ).value
        < 0.2
    )
    score = decision_score(model, x, y, params={"steps": 200})
    assert score.n == 32 and score.failed < 8  # failures: no noise start was adversarial
    assert 0 < score.score < 0.25 and score.median_queries is not None
    assert set(score.to_dict()) == {"score", "n", "failed", "median_queries"}  # the record


def test_wilson_bounds_contain_the_rate_at_the_extremes() -> None:
    from robustlab.evaluation.stats import wilson_interval

    for n in (1, 7, 100, 119, 300, 1000):
        for hits in (0, n):
            low, high = wilson_interval(hits, n)
            assert low <= hits / n <= high


def test_curve_figure_accepts_rates_at_zero() -> None:
    from robustlab.report.figures import accuracy_curves, is_blank

    zero = {"hits": 0, "n": 100, "rate": 0.0, "low": 1e-18, "high": 0.037}  # an old record
    record = {"curves": {"m": {"1.0": zero, "2.0": zero}}}
    assert not is_blank(accuracy_curves(record, "ε", "t"))
