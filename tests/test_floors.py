"""The floors of robustlab run one way (docs/design.md): no module imports a higher floor,
whatever the form of the import, and no import hides inside a function to dodge a cycle.

A module's floor is that of the longest prefix below; an import edge A -> B is allowed when
floor(A) >= floor(B). The command line (and the package facade, ``robustlab.load``) import
lazily on purpose: ``robustlab --help`` must not wait for torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
FLOORS = {
    # the bottom: no robustlab imports but each other
    "robustlab.version": 0,
    "robustlab.io": 0,
    "robustlab.units": 0,
    "robustlab.seeding": 0,
    "robustlab.distributed": 0,
    "robustlab.registry": 0,
    "robustlab.allocator": 0,
    "robustlab.data": 1,
    # records of a run: plain data beside the networks
    "robustlab.models": 2,
    "robustlab.training.config": 2,
    "robustlab.attacks": 3,
    # the defenses that edit a network before training (and the Defense contract)
    "robustlab.defenses.defective": 4,
    "robustlab.defenses.baselines": 4,
    "robustlab.defenses.base": 4,
    # a model with its training-time defenses, its training loop, its run folder
    "robustlab.assemble": 5,
    "robustlab.training": 5,
    "robustlab.runs": 5,
    # the defenses that wrap (and may fine-tune) a trained model, the training-time configs
    "robustlab.defenses": 6,
    "robustlab.evaluation": 7,
    "robustlab.report": 8,
    "robustlab.experiments": 9,
    "robustlab.cli": 10,
    "robustlab.__main__": 10,
    "robustlab": 10,  # the package facade
}
LAZY = {"robustlab.cli", "robustlab"}  # may import inside functions (startup time)


def floor(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise AssertionError(f"{module} has no floor: add it to FLOORS")


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "robustlab").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported robustlab module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body} | {
        id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robustlab"):
            # `from robustlab import distributed` imports the module robustlab.distributed
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("robustlab")]
        else:
            continue
        found += [(t, node.lineno, id(node) in top) for t in targets]
    return found


def test_every_module_has_a_floor() -> None:
    for name in modules():
        floor(name)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_imports_a_higher_floor(name: str) -> None:
    known = modules()
    for target, line, _ in imports(known[name], known):
        assert floor(target) <= floor(name), (
            f"{name}:{line} (floor {floor(name)}) imports {target} (floor {floor(target)})"
        )


@pytest.mark.parametrize("name", sorted(set(modules()) - LAZY))
def test_no_import_hides_in_a_function(name: str) -> None:
    known = modules()
    hidden = [(target, line) for target, line, at_top in imports(known[name], known) if not at_top]
    assert not hidden, f"{name} imports inside functions: {hidden}"


def test_the_checker_sees_a_bad_import(tmp_path: Path) -> None:
    """The test itself can fail: a planted upward and a hidden import are both found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from robustlab.cli import main\n\ndef f():\n    from robustlab import io\n")
    found = imports(bad, modules())
    assert ("robustlab.cli", 1, True) in found and ("robustlab.io", 4, False) in found
    assert floor("robustlab.cli") > floor("robustlab.models.base")


def test_the_attack_command_reaches_the_kernel_directly(digits_run: Path, tmp_path: Path) -> None:
    """Issue #24's measure: from cli.py to the first input gradient, at most 6 files on the
    call stack and at most 2 returns to a file already left (scripts/attack_call_path.py)."""
    script = Path(__file__).parents[1] / "scripts" / "attack_call_path.py"
    args = ["--source", str(digits_run), "--attack", "pgd", "--eps", "8", "--steps", "1"]
    args += ["--n", "4", "--out", str(tmp_path / "set.npz"), "--quiet"]
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    *stack, summary = done.stdout.strip().splitlines()[1:]
    assert stack[0].startswith("cli.py") and stack[-1].startswith("attacks/base.py")
    files, returns = (int(word) for word in summary.split()[0:3:2])
    assert files <= 6 and returns <= 2, done.stdout
