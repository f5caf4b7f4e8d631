r"""Convolutional basis pursuit denoising (CBPDN), batched, by ADMM in the DFT domain.

For each image :math:`s` (C channels) and a dictionary of M filters
:math:`d_m` (C × P × P, one single-channel coefficient map per filter):

.. math::
   \min_x \tfrac12 \Big\| \sum_m d_m * x_m - s \Big\|_2^2 + \lambda \sum_m \|x_m\|_1 .

ADMM splits :math:`x = y` (Wohlberg, "Efficient algorithms for convolutional
sparse representations", 2016), as sporco's ``admm.cbpdn.ConvBPDN``:

- x-step: :math:`(D^H D + \rho I)\,\hat x = D^H \hat s + \rho\,\widehat{(y - u)}` per
  frequency. :math:`D` is C × M per frequency, so by Woodbury
  :math:`\hat x = (b - D^H (\rho I + D D^H)^{-1} D b)/\rho`; the C × C Gram matrices
  are diagonalised once, which makes any per-image :math:`\rho` cheap
  (for C = 1 this is Sherman–Morrison).
- over-relaxation: :math:`a = \alpha x + (1 - \alpha) y`;
- y-step: :math:`y = \mathcal{S}_{\lambda/\rho}(a + u)` (soft threshold);
- u-step: :math:`u \mathrel{+}= a - y`.

Stopping uses sporco's relative residuals, :math:`r = \|x - y\| / \max(\|x\|, \|y\|)`
and :math:`s = \|y_{k-1} - y_k\| / \|u\|`, against ``rel_tol``; :math:`\rho` follows
Wohlberg's adaptive residual balancing (2015) every iteration. Every image has
its own :math:`\rho` and its own stopping test, so an image's result never depends
on the other images in its batch: the solver iterates a few images at a time
(``CBPDNOptions.batch_size``) and replaces each converged image by a waiting one, so
no work is spent on finished images, and memory follows the working set: an image's
variables are made when it enters it and its result is copied out when it leaves.
In-place updates touch only values no backward pass reads, and rows are refilled out of
place while autograd records, so autograd differentiates through the loop.
Differentiated, each iteration is checkpointed (``CBPDNOptions.checkpoint``): backward
keeps only every iteration's inputs (y, ρu, ρ) and recomputes the rest, so memory grows
by two coefficient maps per iteration instead of about ten, for one more forward
iteration each in the backward pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class CBPDNOptions:
    """ADMM settings; the defaults are sporco's ``ConvBPDN`` defaults.

    ``max_iter`` and ``rel_tol`` default to the values of the CSC defense's
    released reconstruction script (200 iterations, 5e-3).
    """

    max_iter: int = 200
    rel_tol: float = 5e-3
    abs_tol: float = 0.0
    relax: float = 1.8
    rho: float | None = None  # None: 50 λ + 1
    auto_rho: bool = True
    rho_scaling: float = 1000.0  # the largest factor of one ρ update
    residual_ratio: float = 1.2
    residual_target: float | None = None  # None: 1 + 18.3^(log10 λ + 1)
    # Images iterated at once (None: 8 on CPU, 16 compiled, where small sets stay in cache;
    # 1024 on a GPU). A converged image leaves and a waiting one takes its place. Results
    # do not depend on it.
    batch_size: int | None = None
    # Fuse each iteration's element-wise work with torch.compile: ~1.5x faster on CPU;
    # needs a C++ compiler (Triton on GPUs), and the first call compiles for 8-20 s.
    compile: bool = False
    # Eager solves on a CPU with several threads and no autograd, of images whose maps take
    # 32 KB to 256 KB (64 maps of 32 x 32): split the batch into one part per thread, each
    # solved by its own single-thread working set, side by side (PyTorch's per-op threading
    # of an 8-image working set can leave much of the second core idle: 0.94-1.46x, median
    # ~1.17x, at 32 x 32 on 2 shared cores; at 64 x 64 the parts' working sets outgrow the
    # caches and it was 5 % slower; benchmarks/csc_split.py). Results do not depend on it.
    side_by_side: bool = True
    # Differentiated solves (an attack through the unrolled solver): recompute each
    # iteration's intermediates in the backward pass instead of keeping them (module docstring)
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if not 0.0 < self.relax < 2.0:
            raise ValueError(f"relax must lie in (0, 2), got {self.relax}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    def initial_rho(self, lmbda: float) -> float:
        """The ρ of a cold start (sporco's default 50 λ + 1 unless ``rho`` is set)."""
        return self.rho if self.rho is not None else 50.0 * lmbda + 1.0


@dataclass
class CBPDNState:
    """ADMM variables, to warm-start a later solve (dictionary learning does)."""

    y: torch.Tensor  # (B, M, H, W): the sparse coefficient maps
    u: torch.Tensor  # (B, M, H, W): the scaled dual variable
    rho: torch.Tensor  # (B,)


@dataclass
class CBPDNResult:
    coefficients: torch.Tensor  # (B, M, H, W), the sparse variable y
    state: CBPDNState
    iterations: torch.Tensor  # (B,) iterations each image ran


class FourierDictionary:
    r"""A dictionary's DFT at one image size, with what the x-step solve needs precomputed.

    Per frequency f, :math:`D(f)` is the C × M matrix :math:`\hat d_{m,c}(f)`. With the
    eigen-decomposition :math:`D D^H = V \Lambda V^H` (C × C), Woodbury gives
    :math:`(D^H D + \rho I)^{-1} b = (b - D^H V (\Lambda + \rho)^{-1} V^H D b) / \rho`;
    ``_to_eigen_t`` (C × M) and ``_from_eigen`` (C × M) hold :math:`(D^T \bar V)^T` and
    :math:`V^T \bar D`, acting on row vectors in the layout (F, B, M) with F = H × W/2+1,
    stored as real matrices on interleaved (re, im) pairs: a real batched matmul is about
    twice as fast as a complex one on CPU.
    """

    def __init__(self, dictionary: torch.Tensor, size: tuple[int, int]) -> None:
        if dictionary.ndim != 4:
            raise ValueError(
                f"dictionary must be (M, C, P, P), got shape {tuple(dictionary.shape)}"
            )
        if dictionary.shape[-1] > size[1] or dictionary.shape[-2] > size[0]:
            raise ValueError(
                f"filters {tuple(dictionary.shape[-2:])} larger than the images {size}"
            )
        self.size = size
        self.freq = torch.fft.rfft2(dictionary, s=size)  # (M, C, H, Wf)
        m, c = self.freq.shape[:2]
        by_freq = self.freq.permute(2, 3, 1, 0).reshape(-1, c, m)  # (F, C, M)
        eigenvalues, eigenvectors = torch.linalg.eigh(by_freq @ by_freq.mH)  # (F, C), (F, C, C)
        self._eigenvalues = eigenvalues.repeat_interleave(2, dim=1).unsqueeze(2)  # (F, 2C, 1)
        # stored transposed, (F, 2C, 2M): the product with the right-hand sides is then
        # (2C × 2M) @ (2M × B), which MKL's batched GEMM runs ~4x faster than the
        # (B × 2M) @ (2M × 2C) form, whose 2C-wide output is too narrow for its kernels
        to_eigen = _real_matrix(by_freq.transpose(1, 2) @ eigenvectors.conj())  # (F, 2M, 2C)
        self._to_eigen_t = to_eigen.mT.contiguous()
        self._from_eigen = _real_matrix(eigenvectors.transpose(1, 2) @ by_freq.conj())

    # Both products below run per output channel on a few images at a time. ``einsum`` made
    # them per-frequency batched matmuls whose strided operands it copied matrix by matrix:
    # 4.3 ms for 24 images of 64 maps of 28 × 28 against 0.27 ms this way (2 cores); a
    # chunk's temporaries stay in cache (all 256 images of 32 × 32 at once were as slow).
    _CHUNK = 16

    def synthesise(self, coefficients_freq: torch.Tensor) -> torch.Tensor:
        """Σ_m d_m * x_m in the DFT domain: (B, M, H, Wf) -> (B, C, H, Wf)."""
        return torch.cat(
            [
                torch.stack([(chunk * filters).sum(1) for filters in self.freq.unbind(1)], 1)
                for chunk in torch.split(coefficients_freq, self._CHUNK)
            ]
        )

    def adjoint(self, signal_freq: torch.Tensor) -> torch.Tensor:
        """D^H applied per frequency: (B, C, H, Wf) -> (B, M, H, Wf)."""
        conjugate = self.freq.conj()

        def product(chunk: torch.Tensor) -> torch.Tensor:  # Σ_c s_c conj(d_mc), c in order
            total: torch.Tensor = chunk[:, 0, None] * conjugate[:, 0]
            for c in range(1, chunk.shape[1]):
                total = total + chunk[:, c, None] * conjugate[:, c]
            return total

        return torch.cat([product(chunk) for chunk in torch.split(signal_freq, self._CHUNK)])

    def x_step(self, target: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        r"""x = F⁻¹ (I + D^H D / ρ)⁻¹ F t per image: (B, M, H, W) -> (B, M, H, W).

        With t = y − u + D^T s / ρ this is ADMM's x-step,
        :math:`(D^H D + \rho I)^{-1} (D^H \hat s + \rho (\hat y - \hat u))` back in pixels.
        """
        b, m, h, w = target.shape
        spectrum = torch.fft.rfft2(target)
        # frequency-major and contiguous for the batched matmuls: (F, B, M) complex
        rhs = spectrum.permute(2, 3, 0, 1).reshape(-1, b, m).contiguous()
        rhs_real = torch.view_as_real(rhs).view(-1, b, 2 * m)
        inner_t = torch.bmm(self._to_eigen_t, rhs_real.mT)  # (F, 2C, B)
        inner_t = inner_t / (self._eigenvalues + rho.view(1, 1, -1))
        inner = inner_t.mT  # (F, B, 2C), a transposed view: no copy
        if self._from_eigen.requires_grad:  # a dictionary being differentiated: out of place
            solved = torch.baddbmm(rhs_real, inner, self._from_eigen, alpha=-1)
        else:  # rhs_real is a fresh copy no backward pass reads: update it in place
            solved = rhs_real.baddbmm_(inner, self._from_eigen, alpha=-1)
        solved_freq = torch.view_as_complex(solved.view(h, -1, b, m, 2))
        # inverse DFT over rows while frequency-major (outermost axis: fast), back to
        # image-major, then over columns (innermost axis): about twice as fast as irfft2
        half = torch.fft.ifft(solved_freq, dim=0).permute(2, 3, 0, 1).contiguous()
        pixels: torch.Tensor = torch.fft.irfft(half, n=w, dim=-1)
        return pixels


def _real_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """The real (F, 2K, 2N) form of complex (F, K, N) matrices acting on row vectors.

    Row vector z (K complex) as [Re z₀, Im z₀, Re z₁, ...] times the result gives z A
    in the same interleaved form.
    """
    f, k, n = matrix.shape
    real = matrix.real.new_empty(f, k, 2, n, 2)
    real[:, :, 0, :, 0] = matrix.real
    real[:, :, 0, :, 1] = matrix.imag
    real[:, :, 1, :, 0] = -matrix.imag
    real[:, :, 1, :, 1] = matrix.real
    return real.view(f, 2 * k, 2 * n)


def image_size(images: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a batch of images."""
    return int(images.shape[-2]), int(images.shape[-1])


def reconstruct(dictionary: FourierDictionary, coefficients: torch.Tensor) -> torch.Tensor:
    """Σ_m d_m * x_m (circular convolution): (B, M, H, W) -> (B, C, H, W)."""
    spectrum = dictionary.synthesise(torch.fft.rfft2(coefficients))
    image: torch.Tensor = torch.fft.irfft2(spectrum, s=dictionary.size)
    return image


def objective(
    dictionary: FourierDictionary, coefficients: torch.Tensor, signal: torch.Tensor, lmbda: float
) -> torch.Tensor:
    """½‖Σ d_m * x_m − s‖² + λ‖x‖₁ per image, shape (B,)."""
    residual = reconstruct(dictionary, coefficients) - signal
    return 0.5 * residual.pow(2).flatten(1).sum(1) + lmbda * coefficients.abs().flatten(1).sum(1)


def _norm(values: torch.Tensor) -> torch.Tensor:
    norms: torch.Tensor = values.flatten(1).norm(dim=1)
    return norms


def _nonzero(norms: torch.Tensor) -> torch.Tensor:
    """sporco's guard: a zero normaliser counts as 1."""
    return torch.where(norms == 0, 1.0, norms)


def cbpdn(
    dictionary: torch.Tensor | FourierDictionary,
    signal: torch.Tensor,
    lmbda: float,
    options: CBPDNOptions | None = None,
    state: CBPDNState | None = None,
) -> CBPDNResult:
    """Sparse-code ``signal`` (B, C, H, W) over ``dictionary`` (M, C, P, P).

    Returns the coefficient maps (B, M, H, W), the ADMM state and the number
    of iterations each image ran. See the module docstring for the algorithm.
    """
    options = options or CBPDNOptions()
    if not isinstance(dictionary, FourierDictionary):
        dictionary = FourierDictionary(dictionary.to(signal), image_size(signal))
    _check_shapes(dictionary, signal)
    batch = signal.shape[0]
    if batch == 0:
        empty = signal.new_zeros(0, dictionary.freq.shape[0], *dictionary.size)
        no_rho = signal.new_zeros(0)
        return CBPDNResult(empty, CBPDNState(empty, empty, no_rho), no_rho.long())
    slots = min(options.batch_size or _default_batch(signal.is_cuda, options.compile), batch)
    images = _Waiting(dictionary, signal, state, options.initial_rho(lmbda))
    out = images.results()
    parts = _parts(dictionary, signal, state, options, slots)
    if parts > 1:
        _side_by_side(dictionary, images, out, lmbda, options, slots=slots, parts=parts)
    else:
        _solve(dictionary, images, out, lmbda, options, slots=slots)
    return out.result()


def _solve(
    dictionary: FourierDictionary,
    images: _Waiting,
    out: _Results,
    lmbda: float,
    options: CBPDNOptions,
    *,
    slots: int,
) -> None:
    """Iterate ``slots`` images at a time until every image of ``images`` is in ``out``."""
    batch = len(images.signal)
    working, waiting = images.take(0, slots), slots
    live = torch.ones(slots, dtype=torch.bool, device=images.signal.device)  # rows not finished
    while bool(live.any()):
        working, done = _recorded_step(dictionary, working, lmbda, options)
        newly = done & live
        if not bool(newly.any()):
            continue
        # a finished row goes to the results and takes the next waiting image; with none
        # left it runs on, ignored
        rows = newly.nonzero().squeeze(1)
        out.put(working.index[rows], working.select(rows))
        count = min(len(rows), batch - waiting)
        if count:
            working = working.put(rows[:count], images.take(waiting, count))
        live, waiting = live.index_fill(0, rows[count:], False), waiting + count
        if waiting == batch:
            working, live = _shrink(working, live)


# The coefficient maps of one image, in bytes, split side by side: below, the threads'
# overhead outweighs ops of microseconds (3 KB: 0.82-0.85x); above, the parts outgrow the
# caches (1 MB, 64 px: 0.95x); between, 0.95-1.46x on 2 shared cores (docs/benchmarks.md,
# `python benchmarks/csc_split.py --any-size`)
_SIDE_BY_SIDE = (1 << 15, 1 << 18)


def _parts(
    dictionary: FourierDictionary,
    signal: torch.Tensor,
    state: CBPDNState | None,
    options: CBPDNOptions,
    slots: int,
) -> int:
    """How many single-thread solves to run side by side (1: one solve, every thread per op).

    Only eager CPU solves of small images (``CBPDNOptions.side_by_side``) that autograd does
    not record, and only with a full working set each: compiled kernels carry their own
    thread count, and autograd would record across threads.
    """
    threads = torch.get_num_threads()
    if not options.side_by_side or options.compile or signal.is_cuda or threads < 2:
        return 1
    map_bytes = dictionary.freq.shape[0] * signal[0, 0].numel() * signal.element_size()
    if not _SIDE_BY_SIDE[0] <= map_bytes <= _SIDE_BY_SIDE[1]:
        return 1
    tensors = (signal, dictionary.freq, *((state.y, state.u, state.rho) if state else ()))
    if _records(*tensors):
        return 1
    return max(1, min(threads, len(signal) // slots))


def _side_by_side(
    dictionary: FourierDictionary,
    images: _Waiting,
    out: _Results,
    lmbda: float,
    options: CBPDNOptions,
    *,
    slots: int,
    parts: int,
) -> None:
    """:func:`_solve` on contiguous parts of the batch, one thread of one intra-op thread each.

    Each image's solve is independent of the others, so this is the same solution; the parts
    are fixed by the batch size, so it is as deterministic as one solve. Each part writes
    its rows of ``out`` in place.
    """
    threads = torch.get_num_threads()
    bounds = [len(images.signal) * k // parts for k in range(parts + 1)]

    def solve(start: int, stop: int) -> None:
        torch.set_num_threads(1)  # this thread's OpenMP team, and MKL's while the parts run
        part = slice(start, stop)
        _solve(dictionary, images.part(part), out.part(part), lmbda, options, slots=slots)

    try:
        with ThreadPoolExecutor(parts, thread_name_prefix="cbpdn") as pool:
            list(pool.map(solve, bounds[:-1], bounds[1:]))  # list(): re-raises a part's error
    finally:
        torch.set_num_threads(threads)


class _Waiting:
    """The images of one call, their ADMM variables made as they enter the working set:
    memory follows the working set (and the result), not the whole batch (at 224 px, 64
    images of 64 maps took 822 MB for each batch-wide array)."""

    def __init__(
        self,
        dictionary: FourierDictionary,
        signal: torch.Tensor,
        state: CBPDNState | None,
        rho: float,
    ) -> None:
        self.dictionary, self.signal, self.state, self.rho = dictionary, signal, state, rho

    def take(self, start: int, count: int) -> _Images:
        """Images ``start`` to ``start + count``, fresh tensors the solver may update in place."""
        part, shape = slice(start, start + count), (count, self.dictionary.freq.shape[0])
        signal, state = self.signal[part], self.state
        # D^T s in the pixel domain: the x-step adds it before its FFT, one real pass
        spectrum = self.dictionary.adjoint(torch.fft.rfft2(signal))
        back = torch.fft.irfft2(spectrum, s=self.dictionary.size)
        if state is None:
            y = signal.new_zeros(*shape, *self.dictionary.size)
            rho = signal.new_full((count,), self.rho)
            dual = torch.zeros_like(y)
        else:
            y, rho = state.y[part].clone(), state.rho[part].clone()
            dual = state.u[part] * rho.view(-1, 1, 1, 1)
        index = torch.arange(start, start + count, device=signal.device)
        steps = torch.zeros(count, dtype=torch.long, device=signal.device)
        return _Images(index, y, dual, rho, back, steps)

    def part(self, rows: slice) -> _Waiting:
        """The images ``rows`` alone (views: nothing is copied)."""
        state = self.state
        if state is not None:
            state = CBPDNState(state.y[rows], state.u[rows], state.rho[rows])
        return _Waiting(self.dictionary, self.signal[rows], state, self.rho)

    def results(self) -> _Results:
        """Empty result arrays for every image, filled as images finish."""
        shape = (len(self.signal), self.dictionary.freq.shape[0], *self.dictionary.size)
        steps = torch.zeros(len(self.signal), dtype=torch.long, device=self.signal.device)
        empty = self.signal.new_empty(shape)
        return _Results(empty, torch.empty_like(empty), self.signal.new_empty(shape[0]), steps)


@dataclass
class _Results:
    """What the finished images leave: y, the unscaled dual, ρ and iterations, in input
    order. Filled in place (autograd records in-place copies into tensors it does not need
    the old values of), so a call holds two batch-wide arrays, not a list of parts and
    their concatenation."""

    y: torch.Tensor
    dual: torch.Tensor
    rho: torch.Tensor
    steps: torch.Tensor

    def put(self, index: torch.Tensor, done: _Images) -> None:
        for field, new in ((self.y, done.y), (self.dual, done.dual), (self.rho, done.rho)):
            field.index_copy_(0, index, new)
        self.steps.index_copy_(0, index, done.steps)

    def part(self, rows: slice) -> _Results:
        """The rows ``rows``, as views: a part's solve fills them in place."""
        return _Results(self.y[rows], self.dual[rows], self.rho[rows], self.steps[rows])

    def result(self) -> CBPDNResult:
        scale = self.rho.view(-1, 1, 1, 1)
        u = self.dual / scale if _records(self.dual) else self.dual.div_(scale)  # u = (ρu) / ρ
        return CBPDNResult(self.y, CBPDNState(self.y, u, self.rho), self.steps)


def _shrink(working: _Images, live: torch.Tensor) -> tuple[_Images, torch.Tensor]:
    """Drop finished rows once they are half of ``working``, keeping a power-of-two size.

    Few distinct sizes keep ``torch.compile`` from recompiling for every size.
    """
    alive = int(live.sum())
    if alive == 0 or 2 * alive > len(live):
        return working, live
    size = 1 << (alive - 1).bit_length()
    keep = torch.argsort(live.to(torch.uint8), descending=True, stable=True)[:size]
    return working.select(keep), live[keep]


def _default_batch(cuda: bool, compiled: bool) -> int:
    """Working-set size: measured fastest on 2 CPU cores (larger sets fall out of cache);
    on a GPU enough images to fill it (~2.5 GB of float32 working arrays)."""
    if cuda:
        return 1024
    return 16 if compiled else 8


@dataclass
class _Images:
    """ADMM variables of a set of images, ``index`` their places in the input batch."""

    index: torch.Tensor
    y: torch.Tensor
    dual: torch.Tensor  # ρ u, the unscaled dual: unchanged when ρ changes, so never rescaled
    rho: torch.Tensor
    back: torch.Tensor  # D^T s
    steps: torch.Tensor  # iterations run

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return self.index, self.y, self.dual, self.rho, self.back, self.steps

    def select(self, keep: torch.Tensor) -> _Images:
        return _Images(*(field[keep] for field in self._fields()))

    def put(self, rows: torch.Tensor, other: _Images) -> _Images:
        """These images with ``rows`` replaced by ``other``.

        In place unless autograd records: backward passes read the replaced values.
        """
        if not len(rows):
            return self
        pairs = zip(self._fields(), other._fields(), strict=True)
        if _records(*self._fields()):
            return _Images(*(field.index_copy(0, rows, new) for field, new in pairs))
        for field, new in pairs:
            field.index_copy_(0, rows, new)
        return self


def _step(
    dictionary: FourierDictionary, images: _Images, lmbda: float, options: CBPDNOptions
) -> tuple[_Images, torch.Tensor]:
    """One ADMM iteration and ρ update of ``images``; also which of them have converged.

    Eager and unrecorded, the iteration overwrites arrays it no longer needs (the x-step's
    output and the old y) instead of allocating new ones, with the same operations, so the
    same bits: allocating each pass's 1-2 MB result was half of the element-wise work's time
    on a 2-core EPYC (glibc hands such blocks back to the kernel and faults them in again).
    """
    y, dual, rho = images.y, images.dual, images.rho
    # compiled: fused kernels allocate nothing per pass, and mutated inputs would cost copies
    target_fn, update_fn = _compiled() if options.compile else (_x_target, _update)
    eager = not options.compile
    in_place = eager and not _records(y, dual, images.back, rho)
    x = dictionary.x_step(target_fn(y, dual, images.back, rho, in_place=in_place), rho)
    in_place = eager and not _records(x, y, dual, rho)
    y, dual, rho, steps, done = update_fn(
        x, y, dual, rho, images.steps, lmbda, options, in_place=in_place
    )
    return _Images(images.index, y, dual, rho, images.back, steps), done


def _recorded_step(
    dictionary: FourierDictionary, images: _Images, lmbda: float, options: CBPDNOptions
) -> tuple[_Images, torch.Tensor]:
    """:func:`_step`, checkpointed when autograd records it (``options.checkpoint``)."""
    if not (_records(*images._fields(), dictionary.freq) and options.checkpoint):
        return _step(dictionary, images, lmbda, options)

    def step(*fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new, done = _step(dictionary, _Images(*fields), lmbda, options)
        return (*new._fields(), done)

    *fields, done = checkpoint(step, *images._fields(), use_reentrant=False)
    return _Images(*fields), done


def _records(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on ``tensors`` (so none may be overwritten)."""
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def _x_target(
    y: torch.Tensor,
    dual: torch.Tensor,
    back: torch.Tensor,
    rho: torch.Tensor,
    *,
    in_place: bool = False,
) -> torch.Tensor:
    """y − u + D^T s / ρ = y + (D^T s − ρ u) / ρ: the x-step's right-hand side, before its DFT.

    ``in_place``: written over the temporary D^T s − ρ u (one array allocated, not two).
    """
    difference = back - dual
    if in_place:
        return torch.addcdiv(y, difference, rho.view(-1, 1, 1, 1), out=difference)
    return torch.addcdiv(y, difference, rho.view(-1, 1, 1, 1))


def _update(
    x: torch.Tensor,
    y: torch.Tensor,
    dual: torch.Tensor,
    rho: torch.Tensor,
    steps: torch.Tensor,
    lmbda: float,
    options: CBPDNOptions,
    *,
    in_place: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Relaxation, y- and u-steps, residuals, ρ update and stopping test after an x-step.

    Returns the new (y, ρ u, ρ, steps) and which images are done. ``in_place``: the same
    operations, written over ``x``, ``y`` (both dead after this step) and the step's own
    temporaries, so two arrays are allocated instead of nine; only where nothing records.
    """
    rho_ = rho.view(-1, 1, 1, 1)
    # v = relaxed x + u; soft thresholding splits v into y (shrunk) and u (the clipped rest)
    v = torch.lerp(y, x, options.relax).addcdiv_(dual, rho_)
    bound = lmbda / rho_
    u_new = torch.maximum(v, -bound)  # clamp with tensor bounds is slower
    if in_place:
        u_new = torch.minimum(u_new, bound, out=u_new)
        y_new, dual_new = v.sub_(u_new), u_new.mul_(rho_)
    else:
        u_new = torch.minimum(u_new, bound)
        y_new, dual_new = v - u_new, u_new * rho_
    r_norm = _nonzero(torch.maximum(_norm(x), _norm(y_new)))
    s_norm = _nonzero(_norm(dual_new))
    r = _norm(x.sub_(y_new) if in_place else x - y_new) / r_norm
    s = rho * _norm(y.sub_(y_new) if in_place else y - y_new) / s_norm
    if options.auto_rho:
        target = options.residual_target or (
            1.0 + 18.3 ** (math.log10(lmbda) + 1.0) if lmbda else 1.0
        )
        # sporco balances the residuals from the second iteration on
        rho = rho * torch.where(steps > 0, _rho_factor(r, s, target, options), 1.0)
    steps = steps + 1
    tolerance = math.sqrt(float(y[0].numel())) * options.abs_tol
    primal_ok = r < tolerance / r_norm + options.rel_tol
    converged = primal_ok & (s < tolerance / s_norm + options.rel_tol)
    return y_new, dual_new, rho, steps, converged | (steps >= options.max_iter)


@functools.cache
def _compiled() -> tuple[Callable[..., torch.Tensor], Callable[..., tuple[torch.Tensor, ...]]]:
    """_x_target and _update fused by torch.compile (dynamic shapes: the batch shrinks)."""
    return torch.compile(_x_target, dynamic=True), torch.compile(_update, dynamic=True)


def _rho_factor(
    r: torch.Tensor, s: torch.Tensor, target: float, options: CBPDNOptions
) -> torch.Tensor:
    """Wohlberg's residual balancing: grow ρ when the primal residual dominates."""
    tau, mu = options.rho_scaling, options.residual_ratio
    ratio = torch.where(r > s * target, r / (s * target), (s * target) / r)
    step = torch.clamp(torch.sqrt(ratio), max=tau)
    step = torch.where((r == 0) | (s == 0), torch.full_like(step, tau), step)
    grow = r > target * mu * s
    shrink = ~grow & (s > (mu / target) * r)
    return torch.where(grow, step, torch.where(shrink, 1.0 / step, torch.ones_like(step)))


def _check_shapes(dictionary: FourierDictionary, signal: torch.Tensor) -> None:
    channels = dictionary.freq.shape[1]
    if signal.ndim != 4 or signal.shape[1] != channels:
        raise ValueError(
            f"images must be (B, {channels}, H, W) for a {channels}-channel dictionary, "
            f"got {tuple(signal.shape)}"
        )
    if tuple(signal.shape[-2:]) != dictionary.size:
        raise ValueError(f"images are {tuple(signal.shape[-2:])}, prepared for {dictionary.size}")
