"""The benchmarks are not run by the suite (they take minutes), but they must keep importing:
an API change that breaks one should fail here, not on the day someone measures."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_imports_and_has_a_main(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert callable(module.main)


def test_the_scaling_benchmark_measures_every_task_and_fits_exponents(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS[0].parent))
    try:
        import scaling
    finally:
        sys.path.pop(0)
    assert scaling.exponent([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)
    assert scaling.exponent([1, 10, 100], [1, 100, 10000]) == pytest.approx(2.0)
    import torch

    curves = {}
    for name, task in scaling.TASKS.items():  # every task runs on a tiny problem
        point = scaling.measure(task, 4, 16, torch.device("cpu"))
        assert point["seconds"] > 0 and point["peak_rss_mb"] > 0
        twice = [{"x": 4, **point}, {"x": 8, **point}]
        curves[name] = {"n": twice, "size": twice}
    lines = scaling._table(curves, torch.device("cpu"), 1)
    assert any(line.startswith("| purification | n | n=4:") for line in lines)
    # a re-measured task merges into the points of an earlier run; a foreign file is refused
    json_path = tmp_path / "scaling.json"
    json_path.write_text(json.dumps(curves))
    assert scaling._earlier(json_path) == curves
    json_path.write_text(json.dumps({"purification": {"n": [{"x": "os.system"}], "size": []}}))
    with pytest.raises(SystemExit, match=r"not a scaling\.json"):
        scaling._earlier(json_path)
    json_path.write_text(json.dumps({"nope": {"n": [], "size": []}}))
    with pytest.raises(SystemExit, match=r"not a scaling\.json"):
        scaling._earlier(json_path)
