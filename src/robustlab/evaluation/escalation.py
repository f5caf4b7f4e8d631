"""An evaluation that checks itself and escalates until its checks pass: :func:`evaluate`.

1. **Checks first** (cheap, on the model): randomized predictions, probability outputs,
   test-time optimisation, the number of classes, unavailable gradients on what the
   attacker differentiates, unstable predictions (AutoAttack; Pintor et al. 2022).
2. **The version's attacks** (AutoAttack's standard, plus or rand), each on the images every
   earlier one left, gradient attacks through the defense's declared surface
   (:func:`~robustlab.defenses.base.attack_view`), Square on the model itself; then the
   probes the remaining checks need: a single step, random corners, transfer from the
   undefended base (if given), ε = 1 (not counted: outside the threat model), doubled
   steps and restarts, Square with doubled queries, the binarization test (Zimmermann et
   al. 2022).
3. **Escalation**: while a check fails, the next rung of :data:`LADDER` whose triggers
   include it runs (logits instead of probabilities, EOT, the defense's exact
   differentiable implementation, white-box started from black-box adversarials, Square
   at 5,000 queries or more, more steps and restarts, every target), and the checks are
   computed again on the escalated attacks. White-box rungs attack every image no
   white-box attack has broken yet, so a black-box win can be matched. ``thorough``
   climbs the ladder a second time at twice the budget.

Every step is saved to ``store`` as it finishes (safetensors, keyed by its parameters):
a killed evaluation resumes where it stopped and computes the same verdict.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from robustlab.attacks.adversarial_set import attack_in_batches
from robustlab.attacks.base import Images, Labels, Params, as_images, as_labels, check_images
from robustlab.defenses.base import attack_view
from robustlab.evaluation import checks as C
from robustlab.evaluation import ladder
from robustlab.evaluation.adaptive import BATCH, logits_of
from robustlab.evaluation.stats import Rate
from robustlab.evaluation.strong import VERSIONS, attack_params
from robustlab.evaluation.verdict import EvaluationConfig, Step, Verdict, decide
from robustlab.evaluation.worst_case import Role, WorstCase
from robustlab.io import config_hash, load_tensors, save_tensors
from robustlab.models.cost import CostRecord, Meter, counted
from robustlab.seeding import derive_seed


@dataclass
class _State:
    """What the escalation changes: the differentiated view, the scoring, the checks."""

    view: nn.Module
    surface: str = "declared"
    passes: int = 1
    eot: int = 1
    targets: int = 9
    checks: dict[str, C.Check] = field(default_factory=dict)
    traced: str = ""  # the last step with a loss trace (incomplete optimisation reads it)
    # the probe images the largest Square budget so far attacked and left robust, and that
    # budget: a larger one is judged on them (more_queries_do_not_help)
    square_probe: torch.Tensor | None = None
    square_queries: int = 0


# how a step attacks: the model it attacks and the indices of the images -> adversarials
# ("adv") and, for traced attacks, "success" and "trace"
Runner = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


class Evaluation:
    """One evaluation of ``model`` on ``(x, y)`` (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        config: EvaluationConfig,
        *,
        base: nn.Module | None = None,
        seed: int = 0,
        store: Path | None = None,
        quiet: bool = True,
    ) -> None:
        # a user's networks count their passes too (robustlab.models.cost)
        self.model, self.x, self.y, self.config = counted(model), x.cpu(), y.cpu(), config
        self.base = counted(base) if base is not None else None
        self.seed, self.store, self.quiet = seed, store, quiet
        clean = logits_of(model, self.x)
        self.classes = int(clean.shape[1])
        self.worst = WorstCase(clean.argmax(1) == self.y)
        self.state = _State(view=attack_view(model), targets=config.target_classes)
        self.fired_early: tuple[str, ...] = ()
        self.steps: list[Step] = []
        self.results: dict[str, dict[str, torch.Tensor]] = {}
        self.tried: list[str] = []
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)

    # -- the steps ----------------------------------------------------------------------

    def attack(
        self,
        name: str,
        kind: str,
        params: Params,
        *,
        role: Role,
        todo: torch.Tensor,
        on: str = "view",
        reason: str = "",
        counted: bool = True,
        run: Runner | None = None,
    ) -> Step:
        """Run one step on the images ``todo`` (resumed from ``store`` if it finished there),
        score its adversarials on the real model and record what it broke. ``run``: how to
        attack (default: attack ``kind`` in batches); black-box steps keep their points."""
        meta = {"name": name, "kind": kind, "params": params, "on": on, "n": self.worst.n}
        meta |= {"todo": config_hash(todo.nonzero().flatten().tolist()), "seed": self.seed}
        meta |= {"passes": self.state.passes, "surface": self.state.surface}
        loaded = self._load(name, meta)
        if loaded is None:
            with Meter() as measured:
                saved = self._compute(todo, on, role, run or self._batched(kind, params))
            cost = measured.to_dict()
            self._save(name, meta, saved, cost)
        else:
            saved, cost = loaded
        self.results[name] = saved
        if "trace" in saved and counted:
            self.state.traced = name
        broken = saved["broken"].bool()
        new = self.worst.add(name, role, broken) if counted else 0
        step = Step(
            name=name,
            attack=kind,
            role=role,
            surface=on if on != "view" else self.state.surface,
            reason=reason,
            attacked=int(todo.sum()),
            broke=int((broken & self.worst.correct).sum()),
            new=new,
            robust_after=int(self.worst.robust.sum()),
            seconds=float(cost["seconds"]),
            params=params,
            counted=counted,
            cost=cost,
        )
        self.steps.append(step)
        if not self.quiet:
            print(
                f"  {name}: attacked {step.attacked}, broke {step.broke} ({new} new), "
                f"robust {step.robust_after}/{self.worst.n}  [{step.seconds:.1f}s]",
                file=sys.stderr,
            )
        return step

    def _compute(
        self, todo: torch.Tensor, on: str, role: Role, run: Runner
    ) -> dict[str, torch.Tensor]:
        """Attack the images ``todo`` of the model ``on`` names and score the adversarials."""
        index = todo.nonzero().flatten()
        target = {"view": self.state.view, "model": self.model, "base": self.base}[on]
        if target is None:
            raise ValueError(f"a step on {on!r} needs the undefended base model; pass base=")
        out = run(target, index)
        saved = {"broken": torch.zeros_like(self.worst.correct)}
        saved["broken"][index] = self._misclassified(out["adv"], self.y[index])
        if role == "black":
            saved["points"] = self.x.clone()
            saved["points"][index] = out["adv"].to(self.x)
        if "trace" in out:
            saved["success"] = torch.zeros_like(self.worst.correct)
            saved["success"][index] = out["success"].bool()
            saved["trace"] = torch.full((self.worst.n, out["trace"].shape[1]), math.nan)
            saved["trace"][index] = out["trace"].float()
        return saved

    def _batched(self, kind: str, params: Params) -> Runner:
        def run(target: nn.Module, index: torch.Tensor) -> dict[str, torch.Tensor]:
            seed = derive_seed(self.seed, kind, sorted(params.items()))
            x, y = self.x[index], self.y[index]
            result = attack_in_batches(kind, target, params, x, y, seed=seed, batch_size=BATCH)
            out = {"adv": result.adv}
            if result.trace is not None and result.success is not None:
                out |= {"trace": result.trace, "success": result.success}
            return out

        return run

    def _misclassified(self, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Broken: misclassified by most of ``passes`` forward passes of the real model."""
        wrong = torch.zeros(len(y))
        if not len(y):
            return wrong.bool()
        for _ in range(self.state.passes):
            wrong += (logits_of(self.model, adv).argmax(1) != y).float()
        return wrong > self.state.passes / 2

    def _path(self, name: str) -> Path | None:
        safe = name.replace(":", "_")  # step names are ours: letters, digits, - and :
        return None if self.store is None else self.store / f"{len(self.steps):02d}-{safe}.st"

    def _load(
        self, name: str, meta: dict[str, object]
    ) -> tuple[dict[str, torch.Tensor], CostRecord] | None:
        """A step finished by an earlier run of this plan, and what it cost then."""
        path = self._path(name)
        if path is None or not path.is_file():
            return None
        tensors, saved = load_tensors(path)
        cost = saved.get("cost")
        if (
            saved.get("key") != config_hash(meta)
            or not isinstance(cost, dict)
            or not _is_cost(cost)
        ):
            return None  # another plan's step (the store's key should prevent it): recompute
        for key in ("broken", "success"):
            if key in tensors:
                tensors[key] = tensors[key].bool()
        return tensors, cost

    def _save(
        self,
        name: str,
        meta: dict[str, object],
        tensors: dict[str, torch.Tensor],
        cost: CostRecord,
    ) -> None:
        path = self._path(name)
        if path is not None:
            stored = {
                k: v.to(torch.uint8) if v.dtype == torch.bool else v for k, v in tensors.items()
            }
            save_tensors(path, stored, {"key": config_hash(meta), "cost": cost})

    # -- the plan ---------------------------------------------------------------------

    def run(self) -> Verdict:
        c = self.config
        if not self.worst.correct.any():  # nothing to attack: robust accuracy 0 is exact
            return self._verdict((), (), 0)
        plan = self._plan()
        self._pre_checks(plan)
        if not self.state.checks["randomized"].passed or c.version == "rand":
            self.state.passes, self.state.eot = c.passes, c.eot_samples
        for name in plan:
            kind, params = attack_params(name, eps=c.eps, norm=c.norm, budgets=self.budgets())
            if kind == "apgd" and self.state.eot > 1:
                params["eot_samples"] = self.state.eot
            role: Role = "black" if kind == "square" else "white"
            on = "model" if kind == "square" else "view"
            self.attack(name, kind, params, role=role, todo=self.worst.robust, on=on)
        ladder.probe(self)
        failing = tuple(name for name, check in self.state.checks.items() if not check.passed)
        fired = self.fired_early + failing
        before = int(self.worst.robust.sum())
        for scale in (1, 2) if c.budget == "thorough" else (1,):
            for rung in ladder.LADDER:
                now = {n for n, check in self.state.checks.items() if not check.passed}
                reason = ", ".join(sorted(rung.triggers & now))
                if reason and ladder.climb(self, rung, scale, reason=reason):
                    self.tried.append(rung.name if scale == 1 else f"{rung.name}-x{scale}")
        return self._verdict(fired, tuple(self.state.checks.values()), before)

    def _verdict(self, fired: tuple[str, ...], final: tuple[C.Check, ...], before: int) -> Verdict:
        return Verdict(
            config=self.config,
            clean=Rate(int(self.worst.correct.sum()), self.worst.n),
            robust=Rate(int(self.worst.robust.sum()), self.worst.n),
            checks=final,
            fired=fired,
            steps=tuple(self.steps),
            first_breakers=self.worst.first_breakers(),
            breaker=tuple(self.worst.breaker_of()),
            escalation_broke=before - int(self.worst.robust.sum()) if fired else 0,
            **decide(fired, final, self.tried, robust=int(self.worst.robust.sum())),  # type: ignore[arg-type]
        )

    def budgets(self, scale: int = 1) -> dict[str, int]:
        """The configured budgets, with at most as many targets as the model has classes."""
        return {**self.config.budgets(scale), "target_classes": self.state.targets}

    def _plan(self) -> tuple[str, ...]:
        """The version's attacks this model has classes for (the DLR loss needs 3, its
        targeted form 4): the number-of-classes check says what was dropped."""
        plan = VERSIONS[self.config.version]
        if self.classes <= 3:
            plan = tuple(a for a in plan if a not in ("apgd-t", "fab-t"))
        if self.classes <= 2:
            plan = tuple(a for a in plan if a != "apgd-dlr") or ("apgd-ce",)
        return plan

    def neighbourhood(self) -> float:
        """The per-pixel radius of the unstable-predictions check: a quarter of ε (ℓ2: of
        ε spread evenly over the pixels). Pintor et al. ask for a *small* neighbourhood;
        at the whole ε a plain, undefended CNN's loss already moves by more than 10 %."""
        c = self.config
        return (c.eps if c.norm == "linf" else c.eps / math.sqrt(self.x[0].numel())) / 4

    def probe_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.worst.correct.nonzero().flatten()[: self.config.probe]
        return self.x[index], self.y[index]

    def _pre_checks(self, plan: tuple[str, ...]) -> None:
        """The checks on the model itself, before any attack; the number of classes is
        checked on what was asked (it fires) and on the plan kept (the remedy)."""
        c, (xp, yp) = self.config, self.probe_set()
        asked = C.number_of_classes(
            self.classes, attacks=VERSIONS[c.version], target_classes=c.target_classes
        )
        targets = min(c.target_classes, max(1, self.classes - 1))
        kept = C.number_of_classes(self.classes, attacks=plan, target_classes=targets)
        self.fired_early = () if asked.passed else ("number_of_classes",)
        dropped = {"asked": str(asked.evidence["problem"]), "plan": ",".join(plan)}
        found = [
            C.randomized(self.model, xp, yp),
            C.probability_outputs(self.model, xp),
            C.optimises_at_test_time(self.model, self.x),
            replace(kept, evidence={**kept.evidence, **dropped}),
            C.unavailable_gradients(self.state.view, xp, yp),
            C.unstable_predictions(self.model, xp, yp, radius=self.neighbourhood(), seed=self.seed),
        ]
        self.state.checks = {check.name: check for check in found}
        if not asked.passed:
            self.state.targets = targets


def _is_cost(cost: Mapping[str, object]) -> bool:
    """A step file's cost: counts and seconds as numbers (files are data: checked)."""
    values = [cost.get(k) for k in ("forward", "backward", "queries", "seconds")]
    return all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values)


def evaluate(
    model: nn.Module,
    x: Images,
    y: Labels,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    version: str = "standard",
    budget: str = "standard",
    base: nn.Module | None = None,
    seed: int = 0,
    store: str | Path | None = None,
    quiet: bool = True,
    **budgets: int,
) -> Verdict:
    """The verdict on ``model`` (pixels ``x`` in [0, 1], labels ``y``) at ``eps`` (pixel
    units) in ``norm``: the version's attacks, the failure checks and the escalation.

    ``base``: the undefended model, for the transfer checks; ``store``: a folder that makes
    the evaluation resumable; ``budgets``: any field of :class:`EvaluationConfig`
    (``steps``, ``queries``, ``restarts``, ``target_classes``, ``eot_samples``, ``passes``,
    ``probe``).

    Example
    -------
    >>> verdict = evaluate(model, images, labels, eps=8 / 255, steps=20, queries=500)
    >>> print(verdict.summary())
    """
    config = EvaluationConfig(eps=eps, norm=norm, version=version, budget=budget, **budgets)
    images, labels = as_images(x, model), as_labels(y, "labels")
    check_images(images, model)
    if not len(images) or labels.shape != (len(images),):
        raise ValueError(
            f"{len(images)} images and labels of shape {tuple(labels.shape)}: a verdict needs "
            "at least one image and one integer label per image"
        )
    folder = Path(store) if store is not None else None
    evaluation = Evaluation(
        model, images, labels, config, base=base, seed=seed, store=folder, quiet=quiet
    )
    return evaluation.run()
