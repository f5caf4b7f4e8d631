"""The card and the one-page report of a verdict (``robustlab evaluate``)."""

from __future__ import annotations

from robustlab.evaluation.verdict import EvaluationPlan, Verdict
from robustlab.report.html import esc, page, table

STATUS_TEXT = {
    "reliable": "every failure check passed: the number is as tight as these attacks make it",
    "resolved": "checks fired; the escalation ran their remedies and the checks now pass",
    "unreliable": "a check still fails: an upper bound of unknown tightness",
}


def verdict_card(verdict: Verdict, plan: EvaluationPlan) -> dict[str, object]:
    """RobustBench's model-card fields (numbers as strings, as RobustBench writes them)
    with the verdict's own: status, deciding check, per-attack counts, budget."""
    c = verdict.config
    eps = f"{255 * c.eps:g}/255" if c.norm == "linf" else f"{c.eps:g}"
    # a randomized model's prediction is the majority of ``passes`` forward passes
    passes = c.passes if "randomized" in verdict.fired else 1
    return {
        "name": str(plan["source"]["model"]),
        "architecture": str(plan["source"]["model"]),
        "dataset": str(plan["dataset"]),
        "threat_model": "Linf" if c.norm == "linf" else "L2",
        "eps": eps,
        "clean_acc": f"{100 * verdict.clean.value:.2f}",
        "autoattack_acc": f"{100 * verdict.robust.value:.2f}",
        "number_forward_passes": int(passes),
        "robustlab": {
            "status": verdict.status,
            "deciding": verdict.deciding,
            "advice": verdict.advice,
            "fired": list(verdict.fired),
            "failing": [check.name for check in verdict.failing],
            "first_breakers": dict(verdict.first_breakers),
            "robust": verdict.robust.to_dict(),
            "upper_bound": True,
            "version": c.version,
            "budget": c.budget,
            "budgets": c.budgets(),
            "n": verdict.robust.n,
        },
    }


def verdict_page(verdict: Verdict, plan: EvaluationPlan, command: str) -> str:
    """One self-contained page: the verdict, the checks, the steps, the plan."""
    c = verdict.config
    low, high = verdict.robust.interval
    headline = (
        f"<p><b>Robust accuracy {100 * verdict.robust.value:.1f}%</b> "
        f'<span class="ci">[{100 * low:.1f}, {100 * high:.1f}] n={verdict.robust.n}</span> '
        f"(clean {100 * verdict.clean.value:.1f}%) at ε = {c.eps:.4g} ({esc(c.norm)}), "
        f"AutoAttack version {esc(c.version)}, budget {esc(c.budget)}. "
        "It is an upper bound: the worst case per image over every attack below.</p>"
        f'<p id="status">Status: <b>{esc(verdict.status)}</b>: {esc(STATUS_TEXT[verdict.status])}.'
    )
    if verdict.deciding:
        headline += f" Deciding check: <code>{esc(verdict.deciding)}</code>. {esc(verdict.advice)}"
    headline += "</p>"
    checks = table(
        ["check", "result", "fired first", "evidence", "source", "remedy"],
        [
            [
                f"<td><code>{esc(k.name)}</code></td>",
                f"<td>{'pass' if k.passed else '<b>fails</b>'}</td>",
                f"<td>{'yes' if k.name in verdict.fired else ''}</td>",
                f"<td>{esc(', '.join(f'{a}={_short(v)}' for a, v in k.evidence.items()))}</td>",
                f"<td>{esc(k.source)}</td>",
                f"<td>{esc(k.remedy)}</td>",
            ]
            for k in verdict.checks
        ],
    )
    steps = table(
        [
            "step",
            "attack",
            "role",
            "surface",
            "why",
            "attacked",
            "broke",
            "new",
            "robust after",
            "s",
        ],
        [
            [
                f"<td>{esc(s.name)}</td>",
                f"<td>{esc(s.attack)}</td>",
                f"<td>{esc(s.role)}</td>",
                f"<td>{esc(s.surface)}</td>",
                f"<td>{esc(s.reason or ('not counted' if not s.counted else ''))}</td>",
                *(
                    f'<td class="num">{v}</td>'
                    for v in (s.attacked, s.broke, s.new, s.robust_after)
                ),
                f'<td class="num">{s.seconds:.1f}</td>',
            ]
            for s in verdict.steps
        ],
    )
    plan_text = "\n".join(f"{k} = {v!r}" for k, v in plan.items())
    sections = [
        ("Verdict", headline),
        ("Checks", checks),
        ("Steps", steps),
        ("Plan", f"<pre>{esc(plan_text)}</pre><p>Command: <code>{esc(command)}</code></p>"),
    ]
    return page(f"robustlab evaluate: {plan['source']['model']}", sections)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
