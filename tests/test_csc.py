"""CSC purification: the solver against sporco, dictionary learning, the purifier."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.defenses.csc import (
    CBPDNOptions,
    CSCPurifier,
    LearnedDictionary,
    LearnOptions,
    StratifiedDictionary,
    cbpdn,
    fit_clusters,
    learn_dictionary,
    load_dictionary,
    objective,
    reconstruct,
    save_dictionary,
    tikhonov_split,
)
from robustlab.defenses.csc.cbpdn import FourierDictionary, _parts
from robustlab.defenses.csc.dictionary import random_dictionary
from robustlab.defenses.csc.tikhonov import symmetric_pad
from robustlab.io import RobustlabError

sporco_cbpdn = pytest.importorskip("sporco.admm.cbpdn")
sporco_signal = pytest.importorskip("sporco.signal")


def _problem(channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A unit-norm random dictionary (sporco layout P, P, C, M) and the high-pass of an image."""
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((5, 5, channels, 12))
    dictionary /= np.sqrt((dictionary**2).sum(axis=(0, 1, 2), keepdims=True))
    image = rng.random((16, 16, channels))
    _, high = sporco_signal.tikhonov_filter(image, 5.0, 16)
    return dictionary, high


def _to_torch(dictionary: np.ndarray, high: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    filters = torch.from_numpy(dictionary.transpose(3, 2, 0, 1).copy())
    return filters, torch.from_numpy(high.transpose(2, 0, 1).copy())[None]


@pytest.mark.parametrize("pad", [3, 16, 40])
def test_symmetric_pad_matches_numpy(pad: int) -> None:
    image = np.arange(5 * 7, dtype=np.float64).reshape(5, 7)
    ours = symmetric_pad(torch.from_numpy(image), pad).numpy()
    np.testing.assert_array_equal(ours, np.pad(image, pad, mode="symmetric"))


@pytest.mark.parametrize("channels", [1, 3])
def test_tikhonov_split_matches_sporco(channels: int) -> None:
    image = np.random.default_rng(1).random((28, 20, channels)).astype(np.float32)
    low_ref, high_ref = sporco_signal.tikhonov_filter(image, 5.0, 16)
    low, high = tikhonov_split(torch.from_numpy(image).permute(2, 0, 1)[None], 5.0, 16)
    np.testing.assert_allclose(low[0].permute(1, 2, 0).numpy(), low_ref, atol=1e-5)
    np.testing.assert_allclose(high[0].permute(1, 2, 0).numpy(), high_ref, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("iterations", [3, 25])
def test_cbpdn_objective_matches_sporco(channels: int, iterations: int) -> None:
    dictionary, high = _problem(channels)
    options = {"Verbose": False, "MaxMainIter": iterations, "RelStopTol": 0.0}
    reference = sporco_cbpdn.ConvBPDN(dictionary, high, 0.1, sporco_cbpdn.ConvBPDN.Options(options))
    code_ref = reference.solve().squeeze(axis=(2, 3)).transpose(2, 0, 1)[None]
    filters, signal = _to_torch(dictionary, high)
    ours = cbpdn(filters, signal, 0.1, CBPDNOptions(max_iter=iterations, rel_tol=0.0))
    fourier = FourierDictionary(filters, (16, 16))
    expected = objective(fourier, torch.from_numpy(code_ref.copy()), signal, 0.1).item()
    assert objective(fourier, ours.coefficients, signal, 0.1).item() == pytest.approx(
        expected, rel=0.01
    )
    assert ours.state.rho.item() == pytest.approx(reference.rho, rel=1e-6)


def test_cbpdn_stops_when_sporco_stops() -> None:
    dictionary, high = _problem(3, seed=2)
    options = {"Verbose": False, "MaxMainIter": 500, "RelStopTol": 5e-3}
    reference = sporco_cbpdn.ConvBPDN(dictionary, high, 0.2, sporco_cbpdn.ConvBPDN.Options(options))
    reference.solve()
    filters, signal = _to_torch(dictionary, high)
    ours = cbpdn(filters, signal, 0.2, CBPDNOptions(max_iter=500, rel_tol=5e-3))
    assert ours.iterations.item() == reference.k


def test_cbpdn_recovers_a_known_sparse_code() -> None:
    filters = random_dictionary(8, 1, 5, seed=3, dtype=torch.float64)
    code = torch.zeros(1, 8, 24, 24, dtype=torch.float64)
    spikes = [(0, 3, 4), (2, 12, 15), (5, 20, 6), (7, 8, 19)]
    for m, i, j in spikes:
        code[0, m, i, j] = 2.0
    fourier = FourierDictionary(filters, (24, 24))
    signal = reconstruct(fourier, code)
    # A fixed ρ: sporco's residual balancing (ρ scaled by up to 1000 per step) stalls on
    # noise-free synthetic signals like this one, in sporco as here.
    options = CBPDNOptions(max_iter=500, rel_tol=1e-4, auto_rho=False, rho=1.0)
    found = cbpdn(fourier, signal, 0.01, options).coefficients
    assert (found - code).norm() / code.norm() < 0.02
    assert (reconstruct(fourier, found) - signal).norm() / signal.norm() < 0.02
    largest = found.abs().flatten().topk(len(spikes)).indices
    expected = {np.ravel_multi_index((0, m, i, j), code.shape) for m, i, j in spikes}
    assert set(largest.tolist()) == expected


def test_cbpdn_results_do_not_depend_on_the_batch(device: torch.device) -> None:
    # float64: batched kernels reduce in another order than single-image ones, and in float32
    # that shows in the last bits on some CPUs (and can move a stopping decision)
    filters = random_dictionary(6, 3, 4, seed=0, dtype=torch.float64).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 12, 12, generator=generator, dtype=torch.float64).to(device)
    options = CBPDNOptions(max_iter=60)
    batched = cbpdn(filters, images, 0.1, options)
    alone = cbpdn(filters, images[1:2], 0.1, options)
    torch.testing.assert_close(batched.coefficients[1:2], alone.coefficients)
    assert batched.iterations[1] == alone.iterations[0]


def _mixed_images(count: int, dtype: torch.dtype = torch.float32, size: int = 12) -> torch.Tensor:
    """Images whose CBPDN runs stop after different numbers of iterations."""
    generator = torch.Generator().manual_seed(4)
    contrast = torch.linspace(0.2, 1.0, count, dtype=dtype).view(-1, 1, 1, 1)
    return torch.rand(count, 3, size, size, generator=generator, dtype=dtype) * contrast


def test_cbpdn_working_set_size_does_not_change_results(device: torch.device) -> None:
    # float64: working sets of 1 and 7 images run batched kernels of different shapes whose
    # float32 reduction order differs between CPUs (ρ differed by 3.5e-6 relative on an EPYC)
    filters = random_dictionary(6, 3, 4, seed=0, dtype=torch.float64).to(device)
    images = _mixed_images(7, torch.float64).to(device)
    reference = cbpdn(filters, images, 0.1, CBPDNOptions(max_iter=80, batch_size=7))
    assert len(set(reference.iterations.tolist())) > 2  # converged rows get refilled
    for size in (1, 3):
        result = cbpdn(filters, images, 0.1, CBPDNOptions(max_iter=80, batch_size=size))
        assert torch.equal(result.iterations, reference.iterations)
        torch.testing.assert_close(result.coefficients, reference.coefficients)
        torch.testing.assert_close(result.state.u, reference.state.u)
        torch.testing.assert_close(result.state.rho, reference.state.rho)


def test_cbpdn_side_by_side_parts_give_the_one_solve_solution() -> None:
    # float64, as above: the parts run working sets of other shapes than one solve does
    filters = random_dictionary(8, 3, 4, seed=0, dtype=torch.float64)
    images = _mixed_images(9, torch.float64, size=32)  # maps of 64 KB: large enough to split
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # three parts of three images, whatever this machine has
    try:
        options = CBPDNOptions(max_iter=80, batch_size=3)
        assert _parts(FourierDictionary(filters, (32, 32)), images, None, options, 3) == 3
        split = cbpdn(filters, images, 0.1, options)
        assert torch.get_num_threads() == 3  # restored after the parts ran
        alone = cbpdn(filters, images, 0.1, dataclasses.replace(options, side_by_side=False))
        warm = cbpdn(filters, images, 0.1, options, state=alone.state)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(split.iterations, alone.iterations)
    assert len(set(split.iterations.tolist())) > 2
    for mine, theirs in (
        (split.coefficients, alone.coefficients),
        (split.state.u, alone.state.u),
        (split.state.rho, alone.state.rho),
    ):
        torch.testing.assert_close(mine, theirs)
    assert int(warm.iterations.max()) < int(alone.iterations.max())  # the state was split too


def test_cbpdn_differentiated_compiled_tiny_or_large_solves_are_never_split() -> None:
    fourier = FourierDictionary(random_dictionary(16, 3, 3, seed=1), (32, 32))  # 64 KB of maps
    images = _mixed_images(8, size=32)
    options = CBPDNOptions(batch_size=2)
    assert _parts(fourier, images, None, options, 2) == min(4, torch.get_num_threads())
    assert _parts(fourier, images.requires_grad_(), None, options, 2) == 1
    compiled = dataclasses.replace(options, compile=True)
    assert _parts(fourier, images.detach(), None, compiled, 2) == 1
    large = FourierDictionary(random_dictionary(64, 3, 3, seed=1), (64, 64))  # 1 MB of maps
    assert _parts(large, torch.zeros(8, 3, 64, 64), None, options, 2) == 1
    tiny = FourierDictionary(random_dictionary(4, 3, 3, seed=1), (12, 12))  # 2.3 KB of maps
    assert _parts(tiny, torch.zeros(8, 3, 12, 12), None, options, 2) == 1


def test_cbpdn_gradient_through_refills_matches_finite_differences() -> None:
    filters = random_dictionary(4, 3, 3, seed=1, dtype=torch.float64)
    images = _mixed_images(3, torch.float64)[..., :8, :8].contiguous().requires_grad_(True)
    options = CBPDNOptions(max_iter=12, rel_tol=0.05, batch_size=2)
    iterations = cbpdn(filters, images, 0.1, options).iterations
    assert len(set(iterations.tolist())) > 1 and iterations.max() < 12

    def code(signal: torch.Tensor) -> torch.Tensor:
        return cbpdn(filters, signal, 0.1, options).coefficients

    assert torch.autograd.gradcheck(code, (images,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_cbpdn_checkpointing_keeps_the_gradient_and_bounds_what_backward_keeps() -> None:
    """A differentiated solve checkpoints every iteration: the same gradient (float64, to
    the last bits but reduction order), and backward keeps only each iteration's inputs."""
    filters = random_dictionary(6, 3, 3, seed=1, dtype=torch.float64)
    weights = torch.rand(4, 6, 10, 10, generator=torch.Generator().manual_seed(0))
    found = {}
    for checkpointed in (False, True):
        images = _mixed_images(4, torch.float64)[..., :10, :10].contiguous().requires_grad_(True)
        options = CBPDNOptions(max_iter=30, rel_tol=1e-4, batch_size=2, checkpoint=checkpointed)
        kept = [0]

        def pack(tensor: torch.Tensor, kept: list[int] = kept) -> torch.Tensor:
            kept[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            code = cbpdn(filters, images, 0.1, options).coefficients
        (grad,) = torch.autograd.grad((code * weights.double()).sum(), images)
        found[checkpointed] = grad, kept[0]
    torch.testing.assert_close(found[True][0], found[False][0], rtol=1e-10, atol=1e-12)
    assert found[True][1] < found[False][1] / 3, (found[True][1], found[False][1])


@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile needs a C++ compiler")
def test_cbpdn_compiled_equals_eager() -> None:
    # float64: fused kernels reassociate sums; in float32 that can move a stopping decision
    filters = random_dictionary(6, 3, 4, seed=0, dtype=torch.float64)
    images = _mixed_images(5, torch.float64)
    eager = cbpdn(filters, images, 0.1, CBPDNOptions(max_iter=60, batch_size=2))
    fused = cbpdn(filters, images, 0.1, CBPDNOptions(max_iter=60, batch_size=2, compile=True))
    assert torch.equal(fused.iterations, eager.iterations)
    torch.testing.assert_close(fused.coefficients, eager.coefficients, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("channels", [1, 3])
def test_dictionary_products_equal_their_einsum_definitions(channels: int) -> None:
    # float64: the loops sum over maps and channels in another order than einsum
    filters = random_dictionary(6, channels, 4, seed=0, dtype=torch.float64)
    fourier = FourierDictionary(filters, (12, 12))
    generator = torch.Generator().manual_seed(0)
    for batch in (0, 1, 37):  # empty, one image, more than one chunk of images
        codes = torch.randn(batch, 6, 12, 7, dtype=torch.complex128, generator=generator)
        signal = torch.randn(batch, channels, 12, 7, dtype=torch.complex128, generator=generator)
        synthesised = torch.einsum("mchw,bmhw->bchw", fourier.freq, codes)
        adjoint = torch.einsum("mchw,bchw->bmhw", fourier.freq.conj(), signal)
        torch.testing.assert_close(fourier.synthesise(codes), synthesised, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fourier.adjoint(signal), adjoint, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("auto_rho", [True, False])
def test_cbpdn_in_place_iterations_give_the_recorded_solution_bit_for_bit(auto_rho: bool) -> None:
    # unrecorded solves overwrite dead arrays with the same operations as the out-of-place
    # iterations autograd records, so the same bits (one process, one kernel per op)
    filters = random_dictionary(6, 3, 4, seed=0, dtype=torch.float64)
    images = _mixed_images(5, torch.float64)
    options = CBPDNOptions(max_iter=60, batch_size=2, auto_rho=auto_rho, side_by_side=False)
    with torch.no_grad():
        in_place = cbpdn(filters, images, 0.1, options)
    recorded = cbpdn(filters, images.clone().requires_grad_(), 0.1, options)
    assert recorded.coefficients.requires_grad, "the reference must be the recorded path"
    assert torch.equal(in_place.iterations, recorded.iterations)
    assert torch.equal(in_place.coefficients, recorded.coefficients.detach())
    assert torch.equal(in_place.state.u, recorded.state.u.detach())


def test_cbpdn_rejects_mismatched_channels() -> None:
    with pytest.raises(ValueError, match="3-channel dictionary"):
        cbpdn(random_dictionary(4, 3, 3, seed=0), torch.rand(1, 1, 8, 8), 0.1)


def _textures(n: int = 24, channels: int = 1, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    grid = torch.arange(size, dtype=torch.float32)
    freq = torch.rand(n, 1, 1, 1, generator=generator) * 0.8 + 0.2
    stripes = 0.5 + 0.4 * torch.sin(freq * grid.view(1, 1, 1, -1) + grid.view(1, 1, -1, 1) * 0.3)
    return stripes.expand(n, channels, size, size).contiguous()


def test_dictionary_learning_lowers_the_objective_and_keeps_constraints() -> None:
    _, high = tikhonov_split(_textures())
    options = LearnOptions(iterations=8, seed=1)
    learned = learn_dictionary(high, 6, 5, 0.05, options)
    assert learned.history[-1] < 0.9 * learned.history[0]
    means = learned.filters.mean(dim=(-2, -1))
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-6, rtol=0)
    norms = learned.filters.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    again = learn_dictionary(high, 6, 5, 0.05, options)
    torch.testing.assert_close(learned.filters, again.filters, rtol=0, atol=0)


def test_dictionary_file_round_trip(tmp_path: Path) -> None:
    learned = LearnedDictionary(random_dictionary(4, 3, 5, seed=0), 0.2, history=[3.0, 2.0])
    save_dictionary(tmp_path / "d", learned, images=10, command="robustlab csc learn")
    loaded = load_dictionary(tmp_path / "d")
    assert isinstance(loaded, LearnedDictionary)
    torch.testing.assert_close(loaded.filters, learned.filters)
    assert loaded.lmbda == 0.2 and loaded.history == [3.0, 2.0]
    assert loaded.metadata["images"] == 10 and loaded.metadata["size"] == 5
    with pytest.raises(RobustlabError, match="robustlab csc learn"):
        load_dictionary(tmp_path / "missing")


def test_stratified_dictionary_round_trip_and_purifier(tmp_path: Path) -> None:
    images = torch.cat([_textures(12), 1 - _textures(12)])
    clusters = fit_clusters(images, clusters=2, components=8, epochs=1, seed=0)
    members = [
        LearnedDictionary(random_dictionary(4, 1, 5, seed=k), 0.1, history=[float(k)])
        for k in range(2)
    ]
    save_dictionary(tmp_path / "s", StratifiedDictionary(clusters, members))
    loaded = load_dictionary(tmp_path / "s")
    assert isinstance(loaded, StratifiedDictionary)
    torch.testing.assert_close(loaded.clusters.assign(images), clusters.assign(images))
    torch.testing.assert_close(loaded.members[1].filters, members[1].filters)
    purifier = CSCPurifier(loaded, options=CBPDNOptions(max_iter=20))
    out = purifier(images[:4])
    assert out.shape == images[:4].shape and out.min() >= 0 and out.max() <= 1


def test_purifier_output_range_determinism_and_errors(device: torch.device) -> None:
    images = _textures(5, channels=3).to(device)
    purifier = CSCPurifier(random_dictionary(8, 3, 5, seed=0), lmbda=0.05)
    out = purifier(images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(purifier(images), out, rtol=0, atol=0)
    assert (out - images).abs().mean() < 0.1  # a reconstruction, not noise
    rescaled = CSCPurifier(random_dictionary(8, 3, 5, seed=0), lmbda=0.05, rescale="max")(images)
    torch.testing.assert_close(rescaled.flatten(1).amax(1), torch.ones(5, device=device))
    with pytest.raises(RobustlabError, match="channel"):
        purifier(torch.rand(2, 1, 16, 16, device=device))
    with pytest.raises(RobustlabError, match="lmbda must be positive"):
        CSCPurifier(random_dictionary(8, 3, 5, seed=0), lmbda=0.0)


def test_purifier_gradients_bpda_identity_and_unrolled(device: torch.device) -> None:
    images = _textures(2, channels=1).to(device).requires_grad_(True)
    weights = torch.randn_like(images)
    filters = random_dictionary(6, 1, 5, seed=0)
    bpda = CSCPurifier(filters, lmbda=0.05, bpda=True, options=CBPDNOptions(max_iter=15))
    (grad,) = torch.autograd.grad((bpda(images) * weights).sum(), images)
    torch.testing.assert_close(grad, weights)
    unrolled = CSCPurifier(filters, lmbda=0.05, options=CBPDNOptions(max_iter=15))
    (grad,) = torch.autograd.grad((unrolled(images) * weights).sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not torch.allclose(grad, weights)


def _warm_purifier(**kwargs: object) -> CSCPurifier:
    """Float64 solves that meet the tolerance (a fixed ρ converges on these textures)."""
    filters = random_dictionary(6, 1, 5, seed=0).double()
    options = CBPDNOptions(max_iter=300, rel_tol=1e-3, auto_rho=False)
    return CSCPurifier(filters, lmbda=0.05, options=options, **kwargs)  # type: ignore[arg-type]


def test_warm_start_solves_a_moved_image_in_fewer_iterations_within_tolerance() -> None:
    images = _textures(6).double()
    moved = images.clone()
    moved[:, :, 4:7, 4:7] += 0.02  # a Square-like change of a few pixels
    cold = _warm_purifier()
    with torch.no_grad():
        reference = cold(moved)
        cold_iterations = cold.counts.iterations
        warm = _warm_purifier()
        with warm.warm_start():
            warm(images)  # the earlier solves of the same images
            before = warm.counts.iterations
            result = warm(moved)
    warm_iterations = warm.counts.iterations - before
    assert warm.counts.warm_solves == 6 and warm_iterations < 0.5 * cold_iterations
    # ADMM converges from any start: the same solution, within the stopping tolerance
    torch.testing.assert_close(result, reference, rtol=0, atol=5e-3)
    assert (result - reference).abs().mean() < 5e-4


def test_warm_starts_are_scoped_remember_only_converged_solves_and_skip_autograd() -> None:
    images = _textures(4).double()
    purifier = _warm_purifier()
    with torch.no_grad():
        purifier(images)
        purifier(images)  # outside warm_start(): every solve is cold
        assert purifier.counts.warm_solves == 0
        with purifier.warm_start():
            purifier(images)
            purifier(images)
        assert purifier.counts.warm_solves == 4
        purifier(images)  # the memory went with the block
        assert purifier.counts.warm_solves == 4
    capped = CSCPurifier(
        random_dictionary(6, 1, 5, seed=0).double(),
        lmbda=0.05,
        options=CBPDNOptions(max_iter=2, auto_rho=False),
    )
    with torch.no_grad(), capped.warm_start():
        capped(images)
        capped(images)  # a solve stopped by max_iter is no solution to start from
    assert capped.counts.warm_solves == 0
    unrolled = _warm_purifier()
    with unrolled.warm_start():
        unrolled(images)
        unrolled(images.clone().requires_grad_(True))  # differentiated: the exact, cold solve
    assert unrolled.counts.warm_solves == 0
    with pytest.raises(ValueError, match="warm_capacity"):
        _warm_purifier(warm_capacity=-1)


def test_attacks_warm_start_the_purifier_and_stay_deterministic() -> None:
    from robustlab.attacks.registry import build

    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 3)).double().eval()
    model = nn.Sequential(_warm_purifier(), classifier)
    x, y = _textures(4).double(), torch.tensor([0, 1, 2, 0])
    square = build("square", model, eps=8 / 255, queries=30, seed=3)
    first, second = square(x, y), square(x, y)
    assert model[0].counts.warm_solves > 0  # the attack's queries started warm
    torch.testing.assert_close(first, second, rtol=0, atol=0)
