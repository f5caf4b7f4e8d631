"""The probes and the escalation ladder of :mod:`robustlab.evaluation.escalation`.

:func:`probe` runs what the failure checks need beyond the version's attacks;
:func:`recheck` computes the checks that read the attacks' results (which kind of attack
broke which image, loss traces); :func:`climb` runs one rung of :data:`LADDER` and
computes its checks again on the escalated attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from robustlab.attacks.apgd import APGD
from robustlab.attacks.base import AttackConfig, Params, per_example_norm
from robustlab.defenses.base import ExpectationOverTransformation, exact_view
from robustlab.evaluation import checks as C
from robustlab.evaluation.adaptive import BATCH, logits_of
from robustlab.evaluation.binarization import binarization_test
from robustlab.evaluation.strong import attack_params
from robustlab.models.base import model_device
from robustlab.models.cost import Meter, counted
from robustlab.seeding import derive_seed

if TYPE_CHECKING:
    from robustlab.evaluation.escalation import Evaluation


@dataclass(frozen=True)
class Rung:
    """One remedy of the ladder and the checks that call for it."""

    name: str
    triggers: frozenset[str]
    remedy: str


# What the checks and rungs are, in every cached verdict cell's key: bumped when a check or a
# rung changes, so that no results folder serves a verdict the ladder no longer gives
# (2: more_queries_do_not_help, Square with doubled queries on the probe; 3: a drop of exactly
# the tolerance passes whatever the rounding, checks._at_most)
REVISION = 3

LADDER = (
    Rung("log-outputs", frozenset({"probability_outputs"}), "attack the log of the outputs"),
    Rung(
        "eot",
        frozenset({"randomized", "unstable_predictions", "silent_success"}),
        "APGD-CE and APGD-DLR with EOT; adversarials scored by majority over passes",
    ),
    Rung(
        "exact-surface",
        frozenset({"unavailable_gradients", "test_time_optimisation"}),
        "APGD-CE through the defense's exact differentiable implementation",
    ),
    Rung(
        "square-full",
        frozenset(
            {
                "unavailable_gradients",
                "square_beats_gradients",
                "white_box_beats_black_box",
                "more_queries_do_not_help",
            }
        ),
        "Square with AutoAttack's 5,000 queries (or the config's full_queries)",
    ),
    Rung(
        "from-black-box",
        frozenset({"square_beats_gradients", "white_box_beats_black_box", "transfer_failure"}),
        "APGD-CE started from the black-box adversarials",
    ),
    Rung(
        "more-steps",
        frozenset(
            {
                "incomplete_optimisation",
                "more_budget_does_not_help",
                "iterative_beats_single_step",
                "square_beats_gradients",
                "unconstrained_attack_failure",
                "binarization",
            }
        ),
        "APGD-CE and APGD-DLR with twice the steps and restarts",
    ),
    Rung(
        "targeted",
        frozenset({"square_beats_gradients", "white_box_beats_black_box"}),
        "APGD-T toward every other class",
    ),
)


class LogOutputs(nn.Module):
    """The log of a model's probability outputs: logits again, up to a constant per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.model(x).clamp_min(1e-30))


def _first(mask: torch.Tensor, count: int) -> torch.Tensor:
    """``mask`` with only its first ``count`` True entries kept."""
    kept = torch.zeros_like(mask)
    kept[mask.nonzero().flatten()[:count]] = True
    return kept


def _full_radius(ev: Evaluation) -> float:
    """ε = 1 per pixel: the whole box (ℓ2: its diagonal)."""
    return 1.0 if ev.config.norm == "linf" else math.sqrt(ev.x[0].numel())


def _corners(ev: Evaluation, target: nn.Module, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Random points on the rim of the ε-ball: the black-box floor of any attack."""
    generator = torch.Generator().manual_seed(derive_seed(ev.seed, "corners"))
    x = ev.x[index]
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if ev.config.norm == "linf":
        step = ev.config.eps * noise.sign()
    else:
        step = ev.config.eps * noise / per_example_norm(noise, 2).clamp_min(1e-12)
    return {"adv": (x + step).clamp(0, 1)}


def probe(ev: Evaluation) -> None:
    """The steps the checks need after the version's attacks, then :func:`recheck`."""
    c, w = ev.config, ev.worst
    single: Params = {"eps": c.eps, "step": c.eps, "steps": 1, "norm": c.norm}
    ev.attack("single-step", "pgd", single, role="single", todo=w.correct)
    ev.attack(
        "random-corners",
        "corners",
        {"eps": c.eps, "norm": c.norm},
        role="black",
        todo=w.correct,
        on="model",
        run=lambda target, index: _corners(ev, target, index),
    )
    if ev.base is not None:
        kind, params = attack_params("apgd-ce", eps=c.eps, norm=c.norm, budgets=ev.budgets())
        ev.attack("transfer", kind, params, role="black", todo=w.correct, on="base")
    _unconstrained(ev, scale=1)
    _doubled(ev, scale=1)
    _more_queries(ev)
    _binarization(ev, scale=1)
    recheck(ev)


def _unconstrained(ev: Evaluation, scale: int) -> None:
    """APGD-CE with ε = 1 on the probe images (not counted: outside the threat model)."""
    c = ev.config
    params: Params = {"eps": _full_radius(ev), "norm": c.norm, "steps": c.steps * scale}
    params["loss"] = "ce"
    params |= {"eot_samples": ev.state.eot} if ev.state.eot > 1 else {}
    todo = _first(ev.worst.correct, c.probe)
    step = ev.attack(
        f"unconstrained-x{scale}", "apgd", params, role="white", todo=todo, counted=False
    )
    ev.state.checks["unconstrained_attack_failure"] = C.unconstrained_attack_failure(
        success_at_full_budget=step.broke, attacked=step.attacked
    )


def _doubled(ev: Evaluation, scale: int) -> None:
    """APGD-CE with twice the steps and restarts on the survivors (the probe's worth of
    them on the standard budget): what more budget still finds."""
    c, w = ev.config, ev.worst
    kind, params = attack_params("apgd-ce", eps=c.eps, norm=c.norm, budgets=ev.budgets(2 * scale))
    params |= {"eot_samples": ev.state.eot} if ev.state.eot > 1 else {}
    todo = w.robust if c.budget == "thorough" else _first(w.robust, c.probe)
    before = int(w.robust.sum())
    ev.attack(f"doubled-x{scale}", kind, params, role="white", todo=todo)
    ev.state.checks["more_budget_does_not_help"] = C.more_budget_does_not_help(
        budget=before / w.n, doubled=int(w.robust.sum()) / w.n
    )


def _more_queries(ev: Evaluation) -> None:
    """Square with twice the version's queries on the survivors (the probe's worth of them
    on the standard budget): whether more queries still break images."""
    c, w = ev.config, ev.worst
    if "square" not in ev.results:  # a version without Square (rand): nothing to double
        return
    queries = 2 * c.queries
    budgets = {**ev.budgets(), "queries": queries}
    kind, params = attack_params("square", eps=c.eps, norm=c.norm, budgets=budgets)
    todo = w.robust if c.budget == "thorough" else _first(w.robust, c.probe)
    before = int(w.robust.sum())
    ev.attack("square-doubled", kind, params, role="black", todo=todo, on="model")
    ev.state.checks["more_queries_do_not_help"] = C.more_queries_do_not_help(
        queries=c.queries,
        more=queries,
        accuracy=before / w.n,
        accuracy_more=int(w.robust.sum()) / w.n,
    )
    ev.state.square_probe, ev.state.square_queries = todo & w.robust, queries


def _judge_more_queries(ev: Evaluation, queries: int, before: torch.Tensor) -> None:
    """After Square with ``queries`` on the survivors ``before``: judge it on the probe images
    the largest earlier budget left (and no step since broke), if it is larger than that
    one; else the check stays as it was (the escalation has no larger budget to try)."""
    probe, w = ev.state.square_probe, ev.worst
    if probe is None or queries <= ev.state.square_queries:
        return
    survivors = probe & before
    broken = int((survivors & ~w.robust).sum())
    robust = int(before.sum())
    ev.state.checks["more_queries_do_not_help"] = C.more_queries_do_not_help(
        queries=ev.state.square_queries,
        more=queries,
        accuracy=robust / w.n,
        accuracy_more=(robust - broken) / w.n,
    )
    ev.state.square_probe, ev.state.square_queries = survivors & w.robust, queries


def _binarization(ev: Evaluation, scale: int) -> None:
    c, (xp, _) = ev.config, ev.probe_set()
    view = ev.state.view
    ev.state.checks["binarization"] = binarization_test(
        ev.model,
        view,
        xp[: min(16, c.probe)],
        eps=c.eps,
        norm=c.norm,
        steps=c.steps * scale,
        seed=ev.seed,
    )


def recheck(ev: Evaluation) -> None:
    """The checks that compare attacks: which kind broke which images, and the last loss trace."""
    w, checks = ev.worst, ev.state.checks
    white, single, black = w.by("white"), w.by("single"), w.by("black")
    squares = [m for name, m in w.broke.items() if name.startswith("square")]  # square-full too
    square = torch.stack(squares).any(0) if squares else torch.zeros_like(w.correct)
    extra = int((square & ~(white | single)).sum())
    counts = {"gradient attacks": int((white | single).sum()), "square": extra}
    checks["square_beats_gradients"] = C.square_beats_gradients(counts, w.n)
    white_robust = int((w.correct & ~(white | single)).sum())
    checks["white_box_beats_black_box"] = C.white_box_beats_black_box(
        white_box=white_robust / w.n, black_box=int((w.correct & ~black).sum()) / w.n
    )
    if "transfer" in w.broke:
        checks["transfer_failure"] = C.transfer_failure(
            white_box_robust=white_robust,
            transfer_robust=int((w.correct & ~w.broke["transfer"]).sum()),
            n=w.n,
        )
    checks["iterative_beats_single_step"] = C.iterative_beats_single_step(
        single_step=int((w.correct & ~single).sum()) / w.n,
        iterative=int((w.correct & ~white).sum()) / w.n,
    )
    _trace_checks(ev)


def _trace_checks(ev: Evaluation) -> None:
    """Incomplete optimisation and silent success on the last traced (APGD) step."""
    if not ev.state.traced:
        return
    saved = ev.results[ev.state.traced]
    attacked = ~saved["trace"].isnan().all(1)
    if not attacked.any():
        return
    curve = torch.nanmean(saved["trace"][attacked].double(), 0)
    ev.state.checks["incomplete_optimisation"] = C.incomplete_optimisation(curve)
    ev.state.checks["silent_success"] = C.silent_success(
        saved["success"][attacked].unsqueeze(0), saved["broken"][attacked]
    )


def climb(ev: Evaluation, rung: Rung, scale: int, *, reason: str) -> bool:
    """Run ``rung`` (at ``scale`` times the budget), then compute the checks again; False
    when the rung has nothing to run on this model (no exact implementation, no targets)."""
    c, w = ev.config, ev.worst
    suffix = "" if scale == 1 else f"-x{scale}"
    if rung.name == "log-outputs":
        # eval mode, or attacks restoring its mode would put the model in training mode
        view = LogOutputs(ev.state.view).eval()
        ev.state.view, ev.state.surface = view, ev.state.surface + "+log"
        xp, _ = ev.probe_set()
        ev.state.checks["probability_outputs"] = C.probability_outputs(ev.state.view, xp)
    elif rung.name == "eot":
        ev.state.eot, ev.state.passes = c.eot_samples * scale, c.passes
        _eot_checks(ev)
    elif rung.name == "exact-surface":
        exact = exact_view(ev.model)
        if exact is None:
            return False  # nothing better to differentiate: the checks keep failing
        ev.state.view, ev.state.surface = exact, "exact"
        xp, yp = ev.probe_set()
        ev.state.checks["unavailable_gradients"] = C.unavailable_gradients(exact, xp, yp)
        ev.state.checks["test_time_optimisation"] = C.optimises_at_test_time(exact, xp)
    if rung.name in ("log-outputs", "eot", "exact-surface", "more-steps"):
        budgets = ev.budgets(2 * scale if rung.name == "more-steps" else scale)
        losses = ("apgd-ce", "apgd-dlr") if ev.classes > 2 else ("apgd-ce",)
        for name in losses:
            kind, params = attack_params(name, eps=c.eps, norm=c.norm, budgets=budgets)
            params |= {"eot_samples": ev.state.eot} if ev.state.eot > 1 else {}
            todo = w.correct & ~w.by("white", "single")
            ev.attack(
                f"{rung.name}:{name}{suffix}", kind, params, role="white", todo=todo, reason=reason
            )
    if rung.name == "from-black-box" and not _from_black_box(ev, scale, suffix, reason):
        return False
    elif rung.name == "square-full" and scale * max(c.full_queries, c.queries) <= c.queries:
        return False  # no more queries than the version's Square already had
    elif rung.name == "square-full":
        queries = max(c.full_queries, c.queries) * scale
        budgets = {**ev.budgets(scale), "queries": queries}
        kind, params = attack_params("square", eps=c.eps, norm=c.norm, budgets=budgets)
        before = w.robust.clone()
        ev.attack(
            f"square-full{suffix}",
            kind,
            params,
            role="black",
            todo=w.robust,
            on="model",
            reason=reason,
        )
        _judge_more_queries(ev, queries, before)
    elif rung.name == "targeted" and ev.classes < 4:
        return False
    elif rung.name == "targeted":
        budgets = {**ev.budgets(scale), "target_classes": ev.classes - 1}
        kind, params = attack_params("apgd-t", eps=c.eps, norm=c.norm, budgets=budgets)
        todo = w.correct & ~w.by("white", "single")
        ev.attack(f"targeted{suffix}", kind, params, role="white", todo=todo, reason=reason)
    if rung.name == "more-steps":
        _unconstrained(ev, scale=2 * scale)
        _doubled(ev, scale=2 * scale)
        _binarization(ev, scale=2 * scale)
    recheck(ev)
    return True


def _eot_checks(ev: Evaluation) -> None:
    """Randomness and instability, judged again on what EOT attacks: the average over
    ``eot`` samples must predict the same class on every pass."""
    xp, yp = ev.probe_set()
    averaged = ExpectationOverTransformation(counted(ev.model), ev.state.eot).eval()
    with Meter() as cost:
        predictions = [logits_of(averaged, xp).argmax(1) for _ in range(3)]
    changed = int(sum((p != predictions[0]).sum() for p in predictions[1:]))
    ev.state.checks["randomized"] = C.Check(
        "randomized",
        changed == 0,
        {"eot_samples": ev.state.eot, "passes": ev.state.passes, "changed_predictions": changed},
        C.AUTOATTACK,
        "more EOT samples (a larger budget), or attack the randomness explicitly",
        forwards=cost.forward,
    )
    ev.state.checks["unstable_predictions"] = C.unstable_predictions(
        averaged, xp, yp, radius=ev.neighbourhood(), seed=ev.seed
    )


def _from_black_box(ev: Evaluation, scale: int, suffix: str, reason: str) -> bool:
    """APGD-CE from the black-box adversarials (Carlini et al. 2019), on the images no
    white-box attack broke: from the point of a black-box step that broke the image, else
    from the points of the one that broke most."""
    c, w = ev.config, ev.worst
    black = [name for name in w.broke if w.roles[name] == "black" and "points" in ev.results[name]]
    if not black:
        return False
    # Square's points (the black-box step that broke most) sit nearest the boundary it
    # found; an image some black-box step broke starts from that step's adversarial
    main = max(black, key=lambda name: int(ev.results[name]["broken"].sum()))
    points = ev.results[main]["points"].clone()
    for name in reversed(black):
        broke = ev.results[name]["broken"]
        points[broke] = ev.results[name]["points"][broke]
    kind, budgeted = attack_params("apgd-ce", eps=c.eps, norm=c.norm, budgets=ev.budgets(scale))
    apgd = {k: v for k, v in budgeted.items() if k != "restarts"}  # one run, from the points

    def run(target: nn.Module, index: torch.Tensor) -> dict[str, torch.Tensor]:
        attack, device = AttackConfig(kind, apgd).build(target), model_device(target)
        assert isinstance(attack, APGD)  # attack_params("apgd-ce") names APGD
        parts = [
            attack.run_from(ev.x[i].to(device), ev.y[i].to(device), points[i].to(device))
            for i in torch.split(index, BATCH)
        ]
        if not parts:
            return {"adv": ev.x[index]}
        return {
            "adv": torch.cat([p.adv.cpu() for p in parts]),
            "success": torch.cat([p.success.cpu() for p in parts if p.success is not None]),
            "trace": torch.cat([p.trace.cpu() for p in parts if p.trace is not None]),
        }

    todo = w.correct & ~w.by("white", "single")
    recorded = {**apgd, "start": "+".join(black)}  # the starts are part of the step's key
    ev.attack(
        f"from-black-box{suffix}", kind, recorded, role="white", todo=todo, reason=reason, run=run
    )
    return True
