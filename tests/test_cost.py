"""Counted cost (robustlab.models.cost): passes through the networks, queries, seconds, memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from robustlab import allocator
from robustlab.attacks.registry import build as build_attack
from robustlab.defenses.base import ExpectationOverTransformation
from robustlab.evaluation.clean import passes_per_image
from robustlab.models.base import predict
from robustlab.models.cost import Meter, count_passes, counted, paused
from tests.factories import tiny_cnn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return count_passes(tiny_cnn(num_classes=4).eval())


@pytest.mark.parametrize("steps", [1, 5])
def test_pgd_k_on_n_images_counts_n_k_backwards_and_n_k_plus_n_forwards(steps: int) -> None:
    model, n = _net(), 6
    x, y = torch.rand(n, 1, 12, 12), torch.arange(n) % 4
    pgd = build_attack("pgd", model, eps=8 / 255, step=2 / 255, steps=steps)
    with Meter() as cost:
        adv = pgd(x, y)
        predict(model, adv)  # the final prediction: n more forwards
    assert (cost.forward, cost.backward) == (n * (steps + 1), n * steps)
    assert cost.queries == 0 and cost.seconds > 0 and cost.peak_rss_mb > 0


def test_meters_nest_pause_and_survive_a_failing_forward() -> None:
    model, x = _net(), torch.rand(4, 1, 12, 12)
    with Meter() as outer:
        model(x)
        with Meter() as inner:
            model(x[:3])
            with paused():
                model(x)  # not counted by any open meter
        with pytest.raises(RuntimeError):
            model(torch.rand(2, 3, 12, 12))  # wrong channels: the forward pass raises
        model(x[:1])  # still counted after the failure (the depth was restored)
    assert inner.forward == 3 and outer.forward == 4 + 3 + 1
    model(x)  # no meter open: nothing counts, no hook stays installed
    assert outer.forward == 8


def test_a_meter_inside_a_pause_counts_the_paused_work_alone() -> None:
    """Work made once for several cells (an adversarial set) is measured on its own: it
    counts toward the meter opened inside the pause and toward none outside it."""
    model, x = _net(), torch.rand(4, 1, 12, 12)
    with Meter() as cell:
        model(x[:1])
        with paused(), Meter() as shared:
            model(x)
            model(x[:2]).sum().backward()
            with paused():
                model(x)  # paused again: not even the shared meter counts it
        model(x[:1])
    assert (shared.forward, shared.backward) == (6, 2)
    assert (cell.forward, cell.backward) == (2, 0)
    assert cell.seconds >= 0 and shared.seconds >= 0


def test_nested_counted_networks_count_once_and_ensembles_per_member() -> None:
    inner = _net()
    outer = count_passes(nn.Sequential(inner, nn.Identity()))
    with Meter() as cost:
        outer(torch.rand(5, 1, 12, 12))
    assert cost.forward == 5  # a counted network inside a counted one is one pass
    eot = ExpectationOverTransformation(_net(), samples=7)
    assert passes_per_image(eot, torch.rand(4, 1, 12, 12)) == 7
    user = nn.Sequential(nn.Flatten(), nn.Linear(144, 3))  # a user's module: marked whole
    assert counted(user) is user and passes_per_image(user, torch.rand(2, 1, 12, 12)) == 1


def test_counting_hooks_the_marked_networks_only_and_survives_copies_and_torchscript() -> None:
    import copy
    import warnings

    model = _net()
    assert count_passes(model) is model  # marking twice: still one count per image
    with Meter() as cost:
        # the network's own hooks count: no global hook runs for every module of every network
        assert not nn.modules.module._global_forward_hooks
        model(torch.rand(3, 1, 12, 12))
        copied = copy.deepcopy(model)  # a copy (SFR's defended network) counts as itself
        copied(torch.rand(2, 1, 12, 12))
    assert cost.forward == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(nn.Linear(4, 2))  # takes no hooks of its own
    with Meter() as cost:
        count_passes(scripted)(torch.rand(6, 4))  # marked while a meter is open
        scripted(torch.rand(1, 4))
    assert cost.forward == 7 and not nn.modules.module._global_forward_hooks


def test_score_based_attacks_report_their_queries() -> None:
    model = _net()
    x, y = torch.rand(3, 1, 12, 12), torch.arange(3)
    square = build_attack("square", model, eps=8 / 255, queries=20)
    with Meter() as cost:
        result = square.run(x, y)
    assert result.queries is not None
    assert cost.queries == int(result.queries.sum()) > 0
    assert cost.forward >= cost.queries  # every query is a forward pass of its image


# --- the allocator (robustlab.allocator): freed memory kept in the process on glibc

_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _fresh_process(code: str, *args: str, **env: str) -> list[str]:
    """``code``'s printed lines in a new interpreter (allocator settings are per process)."""
    clean = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(not _GLIBC, reason="glibc's malloc thresholds only")
def test_keep_freed_memory_sets_glibc_thresholds_unless_the_user_chose_them() -> None:
    code = "from robustlab import allocator as a; print(a.keep_freed_memory()); print(a.describe())"
    assert _fresh_process(code) == ["True", allocator.describe_kept()]
    chosen = _fresh_process(code, MALLOC_TRIM_THRESHOLD_="1000000")
    assert chosen == ["False", "user's MALLOC_TRIM_THRESHOLD_=1000000"]


_TRAINING_FAULTS = """
import resource, sys, torch
from torch import nn
from robustlab import allocator
if sys.argv[1] == "kept":
    assert allocator.keep_freed_memory()
torch.manual_seed(0); torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                    nn.ReLU(), nn.Flatten(), nn.Linear(16 * 28 * 28, 10))
sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
x, y = torch.rand(128, 1, 28, 28), torch.arange(128) % 10
def step():
    sgd.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); sgd.step()
for _ in range(3): step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5): step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not _GLIBC, reason="glibc's malloc thresholds only")
def test_kept_memory_spares_a_training_step_its_page_faults() -> None:
    def faults(mode: str) -> float:
        return float(_fresh_process(_TRAINING_FAULTS, mode)[0])

    default = faults("default")
    if default < 500:  # this glibc kept the step's blocks anyway: nothing to spare
        pytest.skip(f"{default:.0f} page faults per step with the C library's defaults")
    assert faults("kept") < default / 4  # measured here: 314 against 3,400-4,000
