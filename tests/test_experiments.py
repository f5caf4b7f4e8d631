"""Experiment specs and the executor: validation, known answers, resume after a kill."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustlab import allocator
from robustlab.experiments.executor import run_spec
from robustlab.experiments.spec import load_spec, parse_spec
from robustlab.experiments.timings import TimingLog, summarize
from robustlab.io import RobustlabError
from tests.files import without_timing

TINY = Path(__file__).parent / "specs" / "tiny.toml"


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("tiny")
    return out, run_spec(load_spec(TINY), out, device="cpu", quiet=True)


def test_every_protocol_writes_records_and_tables(tiny_results) -> None:
    out, records = tiny_results
    kinds = [r["protocol"] for r in records]
    assert kinds.count("transfer") == 6 and kinds.count("ensemble_transfer") == 3
    assert {"whitebox", "decision", "noise", "shuffle"} <= set(kinds)
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == records and saved["spec"]["experiment"]["dataset"] == "digits"
    assert saved["environment"]["allocator"] == allocator.describe()  # as the run saw it
    assert (out / "results.csv").read_text().count("\n") > len(records)
    assert "## Transfer" in (out / "results.md").read_text()


def test_known_answers(tiny_results) -> None:
    _, records = tiny_results
    for r in records:
        if r["protocol"] == "transfer" and r["target"] == "source":
            # a target identical to the source fails on every example that fooled the source
            assert r["defense_rate"]["hits"] == 0
        if r["protocol"] == "ensemble_transfer":
            assert r["target"] not in r["source"].split("+")  # all models but the target
    noise = next(r for r in records if r["protocol"] == "noise")
    n = {row["8.0"]["n"] for row in noise["curves"].values()}
    assert len(n) == 1  # both models are scored on the same images


def test_second_run_reuses_everything(tiny_results, tmp_path: Path) -> None:
    out, records = tiny_results
    stamp = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".npz", ".safetensors")
    }
    again = run_spec(load_spec(TINY), out, device="cpu", quiet=True)
    assert again == records
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # nothing re-made


def test_timing_log_accounts_for_the_work_once(tiny_results) -> None:
    out, records = tiny_results
    lines = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines()]
    kinds = {line["kind"] for line in lines}
    assert {"train", "record", "adversarial set"} <= kinds
    assert sum(line["kind"] == "record" for line in lines) == len(list(out.glob("records/*")))
    assert all(line["seconds"] >= 0 for line in lines)  # exclusive of nested work, never < 0
    cells = [line for line in lines if line["kind"] == "record"]
    assert {c["protocol"] for c in cells} == {r["protocol"] for r in records}
    summary = summarize(out)
    assert summary.total == pytest.approx(sum(line["seconds"] for line in lines))
    assert sum(summary.by_kind.values()) == pytest.approx(summary.total)
    assert summary.largest[0]["seconds"] == max(line["seconds"] for line in lines)
    # beside the seconds, the passes every protocol's records counted, summed
    for protocol, counted in summary.passes.items():
        costs = [r["cost"] for r in records if r["protocol"] == protocol and "cost" in r]
        assert counted.forward == sum(c["forward"] for c in costs)
        assert counted.backward == sum(c["backward"] for c in costs)
    assert summary.passes["whitebox"].backward > 0 and summary.passes["noise"].backward == 0
    whitebox = next(line for line in summary.lines() if line.strip().startswith("whitebox"))
    assert f"{summary.passes['whitebox'].forward:,} fwd" in whitebox


def test_nested_timing_counts_once(tmp_path: Path) -> None:
    now = [0.0]  # a clock the test moves: no sleeping, no dependence on the machine's speed
    log = TimingLog(tmp_path / "t.jsonl", clock=lambda: now[0])
    with log.timed("record", "outer"):
        now[0] += 2.0
        with log.timed("train", "inner"):
            now[0] += 5.0
        now[0] += 1.0
    inner, outer = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert (inner["name"], inner["seconds"]) == ("inner", 5.0)
    assert (outer["name"], outer["seconds"]) == ("outer", 3.0)  # 8 s less the inner 5
    with pytest.raises(RobustlabError, match="no timing log"):
        summarize(tmp_path / "nowhere")


@pytest.mark.slow
def test_resume_after_kill_gives_identical_results(tmp_path: Path) -> None:
    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "robustlab",
            "run",
            str(TINY),
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ]

    # same thread count in both runs: CPU kernels are deterministic per thread count
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "clean"), env=env, check=True, stdout=subprocess.DEVNULL)
    reference = json.loads((tmp_path / "clean" / "results.json").read_text())["records"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob("advs/*.npz")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    subprocess.run(command(out), env=env, check=True, stdout=subprocess.DEVNULL)
    resumed = json.loads((out / "results.json").read_text())["records"]
    assert without_timing(resumed) == without_timing(reference)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"experiment": {"dataset": "imagenet21k"}}, "dataset 'imagenet21k' is missing or unknown"),
        ({"models": {"m": {"arch": "resnet1000"}}}, r"\[models.m\] unknown arch 'resnet1000'"),
        ({"models": {"m": {"defect": "bottom:1.5"}}}, r"\[models.m\] defect: keep probability 1.5"),
        ({"models": {"m": {"widht": 4}}}, r"\[models.m\] unknown key 'widht'"),
        ({"models": {"m": {"epochs": 0}}}, r"\[models.m\] epochs and batch size"),
        ({"attacks": {"a": {"attack": "pgd", "steps": 0}}}, r"\[attacks.a\] steps=0"),
        ({"attacks": {"a": {"attack": "nope"}}}, r"\[attacks.a\] attack 'nope'"),
        (
            {
                "protocols": [
                    {"type": "transfer", "sources": ["x"], "targets": ["m"], "attacks": []}
                ]
            },
            "sources names unknown model 'x'",
        ),
        ({"protocols": [{"type": "magic"}]}, "unknown type"),
        ({"models": {"e": {"members": ["ghost"]}}}, r"\[models.e\] member 'ghost'"),
    ],
)
def test_spec_errors_name_the_entry(patch: dict, message: str) -> None:
    raw = {"experiment": {"dataset": "digits"}, "models": {"m": {}}, "attacks": {}, "protocols": []}
    for key, value in patch.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=message):
        parse_spec(raw)


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RobustlabError, match="spec not found"):
        load_spec(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[experiment\n")
    with pytest.raises(RobustlabError, match="not valid TOML"):
        load_spec(tmp_path / "bad.toml")


def test_demo_spec_for_both_datasets() -> None:
    from robustlab.experiments.demo import demo_spec

    fashion = demo_spec("fashion-mnist")
    assert set(fashion.models) == {"standard", "defective", "source", "csc", "sfr"}
    assert fashion.models["defective"].defense_text() == "defect bottom:0.1"
    assert [p.kind for p in fashion.protocols] == ["transfer", "noise", "verdict", "verdict"]
    assert fashion.models["standard"].train_limit == 20000
    digits = demo_spec("digits")
    assert digits.dataset == "digits" and digits.models["standard"].train.pad == 0
    assert digits.models["standard"].train_limit is None
    assert "csc" not in digits.models and "sfr" in digits.models  # its dictionary is 28 × 28's
    assert [p.kind for p in digits.protocols] == ["transfer", "noise", "verdict"]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "specs").glob("*.toml")))
def test_shipped_specs_are_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.protocols and spec.models


def test_curve_levels_are_numeric_order() -> None:
    from robustlab.evaluation.protocols.tables import curve_levels

    record = {"curves": {"m": {"12.0": {}, "2.0": {}, "32.0": {}, "4.0": {}}}}
    assert curve_levels(record) == ["2.0", "4.0", "12.0", "32.0"]


def test_demo_falls_back_loudly_and_writes_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from robustlab.cli import main
    from robustlab.experiments import demo

    monkeypatch.setattr(demo, "fashion_mnist_problem", lambda download: "no network")
    tiny = load_spec(Path(__file__).parent / "specs" / "tiny.toml")
    monkeypatch.setattr(demo, "demo_spec", lambda dataset: tiny if dataset == "digits" else None)
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING: Fashion-MNIST is not available (no network)" in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert "Do not read this table as a test of the defense" in out
    assert re.search(r"fgsm16 +standard +\d+\.\d% \[[\d.]+, [\d.]+\] +defective", out)
    assert f"report: {tmp_path / 'd' / 'report.html'}" in out
    assert (tmp_path / "d" / "report.html").is_file()


def test_runs_on_a_users_files_are_keyed_by_their_content(
    tmp_path: Path, idx_dir: tuple[Path, dict]
) -> None:
    import gzip

    from tests.files import idx_bytes

    folder, arrays = idx_dir
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f"[experiment]\ndataset = 'mnist'\ndata_dir = '{folder}'\nn = 8\n"
        "[train]\narch = 'lenet'\nwidth = 4\nepochs = 1\npad = 0\n[models.standard]\n"
        "[[protocols]]\ntype = 'noise'\nmodels = ['standard']\nsigmas = [8]\n"
    )
    run_spec(load_spec(spec), tmp_path / "out", device="cpu", quiet=True)
    images = arrays["train-images-idx3-ubyte"].copy()
    images[0] = 255 - images[0]  # the same file names, other pixels
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    run_spec(load_spec(spec), tmp_path / "out", device="cpu", quiet=True)
    assert len(list((tmp_path / "out" / "runs").glob("standard-*"))) == 2  # retrained
