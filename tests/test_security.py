"""Nothing robustlab reads runs code or writes outside its folder (the README's "Security").

Every case goes through the real command line (``main``) and, where there is one, the Python
API, and asserts: the marker file never appears, nothing is written outside the output
folder, nothing is overwritten without --force, one line names the problem and the fix, and
the exit status is 2.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from torch import nn

import robustlab
from robustlab.cli import main
from robustlab.defenses.training_time import configs_of
from robustlab.experiments.executor import run_spec
from robustlab.experiments.sfr import load_sfr
from robustlab.experiments.spec import parse_spec, parse_toml
from robustlab.io import FolderLock, RobustlabError, under
from robustlab.report import write_report
from robustlab.report.tables import csv_text, md_cell, write_csv
from tests.files import TRANSFER_SPEC

SPEC = TRANSFER_SPEC
FACTORY = "tests.factories:tiny_cnn"


def _one_error_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustlab: error:"), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _poison(meta_file: Path, marker: Path) -> None:
    """What an attacker edits into a shared run: a factory that runs a shell command."""
    meta = json.loads(meta_file.read_text())
    meta["model"]["arch"] = "os:system"
    meta["model"]["options"] = {"factory_args": {"command": f"touch {marker}"}}
    meta_file.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small results directory with a transfer cell (the report's gallery loads its runs)."""
    out = tmp_path_factory.mktemp("results") / "results"
    run_spec(parse_spec(parse_toml(SPEC)), out, device="cpu", quiet=True)
    return out


@pytest.fixture
def poisoned(digits_run: Path, results: Path, tmp_path: Path) -> dict[str, Path]:
    """A poisoned run, a results folder holding poisoned runs, an SFR folder, and a spec."""
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    _poison(run / "meta.json", marker)
    shared = tmp_path / "shared"
    shutil.copytree(results, shared)
    for meta in (shared / "runs").glob("*/meta.json"):
        _poison(meta, marker)
    sfr = tmp_path / "sfr"
    shutil.copytree(run, sfr)
    sfr_meta = json.loads((sfr / "meta.json").read_text())
    (sfr / "meta.json").write_text(json.dumps({**sfr_meta, "format": "robustlab-sfr/1"}))
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    return {
        "marker": marker,
        "run": run,
        "shared": shared,
        "sfr": sfr,
        "spec": spec,
        "out": tmp_path / "out",
    }


CODE_CASES: dict[str, Callable[[dict[str, Path]], list[str]]] = {
    "eval-clean": lambda p: ["eval-clean", str(p["run"]), "--device", "cpu"],
    "attack --source": lambda p: [
        "attack",
        "--source",
        str(p["run"]),
        "--attack",
        "fgsm",
        "--eps",
        "8",
        "--out",
        str(p["out"] / "x.npz"),
    ],
    "sfr layers": lambda p: ["sfr", "layers", str(p["run"])],
    "sfr train": lambda p: [
        "sfr",
        "train",
        str(p["run"]),
        "--layers",
        "conv1",
        "--out",
        str(p["out"] / "sfr"),
    ],
    "sfr eval": lambda p: ["sfr", "eval", str(p["sfr"]), "--device", "cpu"],
    "report of a shared folder": lambda p: ["report", str(p["shared"])],
    "run into a folder holding the run": lambda p: [
        "run",
        str(p["spec"]),
        "--out",
        str(p["shared"]),
        "--quiet",
    ],
}


@pytest.mark.parametrize("case", sorted(CODE_CASES))
def test_a_factory_named_in_a_file_is_never_imported(
    case: str, poisoned: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    before = _tree(poisoned["shared"])
    assert main(CODE_CASES[case](poisoned)) == 2
    _one_error_line(capsys, "names the factory 'os:system'", "--trust-factory os:system")
    assert not poisoned["marker"].exists()
    assert not poisoned["out"].exists()  # nothing written, not even an empty folder
    assert _tree(poisoned["shared"]) == before


API_CASES: dict[str, Callable[[dict[str, Path]], object]] = {
    "robustlab.load": lambda p: robustlab.load(p["run"]),
    "configs_of": lambda p: configs_of(p["run"]),
    "load_sfr": lambda p: load_sfr(p["sfr"]),
    "write_report": lambda p: write_report(p["shared"]),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_the_python_api_imports_no_factory_named_in_a_file(
    case: str, poisoned: dict[str, Path]
) -> None:
    with pytest.raises(RobustlabError, match="--trust-factory os:system"):
        API_CASES[case](poisoned)
    assert not poisoned["marker"].exists()


def test_a_factory_the_user_names_is_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    train = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        FACTORY,
        "--epochs",
        "1",
        "--pad",
        "0",
        "--train-limit",
        "64",
        "--out",
        str(run),
        "--quiet",
    ]
    assert main(train) == 0  # named on the command line: trusted
    capsys.readouterr()
    assert main(["eval-clean", str(run), "--device", "cpu"]) == 2
    _one_error_line(capsys, f"--trust-factory {FACTORY}")
    assert main(["eval-clean", str(run), "--device", "cpu", "--trust-factory", FACTORY]) == 0
    monkeypatch.setenv("ROBUSTLAB_TRUST", f"other:thing,{FACTORY}")
    assert main(["eval-clean", str(run), "--device", "cpu"]) == 0
    assert isinstance(robustlab.load(run), nn.Module)


def test_a_run_folder_edited_to_another_model_is_refused(results: Path, tmp_path: Path) -> None:
    """The executor keys a run folder by its config; a meta.json that describes another
    (zoo) model than the key is refused instead of evaluated."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    meta_file = next((copy / "runs").glob("standard-*/meta.json"))
    meta = json.loads(meta_file.read_text())
    meta["model"]["options"] = {"width": 5}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(RobustlabError, match="describes another model"):
        run_spec(parse_spec(parse_toml(SPEC)), copy, device="cpu", quiet=True)


# names ----------------------------------------------------------------------------------------

NAME_CASES = {
    "parent folders": '[models."../../evil"]',
    "absolute": '[models."/tmp/robustlab-evil"]',
    "a separator": '[models."a/b"]',
    "a newline": '[models."a\\nb"]',
    "a dot": '[models."."]',
    "empty": '[models.""]',
    "a pipe": '[models."a|b"]',
    "a formula": '[models."=HYPERLINK(1)"]',
    "a NUL byte": '[models."a\\u0000b"]',
    "hidden": '[models.".hidden"]',
    "attack name": '[attacks."../x"]\nattack = "fgsm"\neps = 8',
    "experiment name": None,
}


def _named_spec(case: str) -> str:
    if NAME_CASES[case] is None:
        return SPEC.replace('dataset = "digits"', 'dataset = "digits"\nname = "../n"')
    return SPEC + "\n" + str(NAME_CASES[case]) + "\n"


def test_protocol_titles_are_one_line_of_text(tmp_path: Path) -> None:
    protocol = '[[protocols]]\ntype = "noise"\nmodels = ["standard"]\nsigmas = [8]\nname = '
    parse_spec(parse_toml(SPEC + protocol + '"Noise | Gaussian, σ in 0-255"'))  # a heading
    for bad in ('"two\\nlines"', '"a\\u0000b"', '""', "3"):
        with pytest.raises(ValueError, match="must be one line of printable text"):
            parse_spec(parse_toml(SPEC + protocol + bad))


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_names_are_identifiers(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(_named_spec(case))
    before = _tree(tmp_path)
    assert main(["run", str(spec), "--out", str(tmp_path / "a" / "b" / "out"), "--quiet"]) == 2
    _one_error_line(capsys, "is not an identifier", "use letters, digits")
    assert _tree(tmp_path) == before and not (tmp_path / "a").exists()
    assert not Path("/tmp/robustlab-evil").exists()
    with pytest.raises(ValueError, match="is not an identifier"):
        parse_spec(parse_toml(_named_spec(case)))


def test_paths_built_from_names_stay_under_their_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    assert under(root, "inside", "x.json") == root / "inside" / "x.json"
    for bad in ("..", "a/b", "/etc", "", ".", "a\0b"):
        with pytest.raises(RobustlabError, match="not a plain file name"):
            under(root, bad)
    (root / "link").symlink_to(tmp_path)  # a planted link out of the folder
    with pytest.raises(RobustlabError, match="leaves"):
        under(root, "link", "x.json")


def test_tables_neutralise_formulas_and_pipes(tmp_path: Path) -> None:
    rate = {"hits": 1, "n": 2, "rate": 0.5, "low": 0.1, "high": 0.9}
    record = {"protocol": "universal", "target": "=1+2", "attack": "file:@x|y", "accuracy": rate}
    write_csv(tmp_path / "r.csv", [record])
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[1][2] == "'=1+2" and rows[1][3] == "file:@x|y"
    assert csv_text("-3") == "'-3" and csv_text(-3) == -3 and csv_text("ok") == "ok"
    assert md_cell("a|b\nc") == "a\\|b c"


# nothing overwritten --------------------------------------------------------------------------


def test_the_report_overwrites_only_its_own_pages(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    run_meta = next((copy / "runs").glob("standard-*/meta.json"))
    for target in (copy / "results.json", run_meta):
        before = target.read_bytes()
        assert main(["report", str(copy), "--out", str(target), "--force"]) == 2
        _one_error_line(capsys, "would overwrite a file of its input", "choose an .html path")
        assert target.read_bytes() == before
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    assert main(["report", str(copy), "--out", str(spec)]) == 2
    _one_error_line(capsys, "is not a robustlab report; pass --force")
    assert spec.read_text() == SPEC
    with pytest.raises(RobustlabError, match="not a robustlab report"):
        write_report(copy, spec)
    page = tmp_path / "page.html"
    page.write_text("<p>my own page</p>")
    assert main(["report", str(copy), "--out", str(page), "--force"]) == 0
    assert main(["report", str(copy), "--out", str(page)]) == 0  # its own page now
    assert main(["report", str(copy)]) == 0  # RESULTS/report.html is always its own


def test_commands_never_write_over_their_inputs(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    perturbation = tmp_path / "uap.npy"
    perturbation.write_bytes(b"not read")
    before = _tree(tmp_path)
    cases = [
        [
            "attack",
            "--source",
            str(run),
            "--attack",
            "fgsm",
            "--eps",
            "8",
            "--out",
            str(run / "meta.json"),
            "--force",
            "--device",
            "cpu",
        ],
        ["sfr", "train", str(run), "--layers", "conv1", "--out", str(run), "--force"],
        [
            "universal",
            "import",
            str(perturbation),
            "--layout",
            "hwc",
            "--channel-order",
            "rgb",
            "--out",
            str(perturbation),
            "--force",
        ],
    ]
    for args in cases:
        assert main(args) == 2, args
        _one_error_line(capsys, "would overwrite the input")
    assert _tree(tmp_path) == before


# one writer per folder ------------------------------------------------------------------------

HOLDER = """
import sys, time
from robustlab.io import FolderLock
with FolderLock(sys.argv[1], "the test's holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextmanager
def _held(folder: Path) -> Iterator[int]:
    """A second process holding ``folder``'s lock; yields its PID."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], text=True, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_stops_naming_the_first(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    before = _tree(run)
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    train = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "lenet",
        "--width",
        "8",
        "--epochs",
        "3",
        "--pad",
        "0",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--train-limit",
        "300",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(run),
    ]  # digits_run's recipe
    with _held(run) as pid:
        for args in ([*train, "--resume"], [*train, "--force"]):
            assert main(args) == 2
            _one_error_line(capsys, f"is being written by process {pid}", "the test's holder")
        assert _tree(run) == {**before, ".robustlab.lock": (run / ".robustlab.lock").read_bytes()}
    with _held(tmp_path / "results") as pid:
        assert main(["run", str(spec), "--out", str(tmp_path / "results"), "--quiet"]) == 2
        _one_error_line(capsys, f"process {pid}")
    # the killed holder left its lock file, but not its lock: the next writer takes it over
    assert (run / ".robustlab.lock").exists()
    assert main([*train, "--resume"]) == 0
    assert not (run / ".robustlab.lock").exists() and robustlab.runs.read_meta(run)["epoch"] == 3


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".robustlab.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": "h"}))
    with FolderLock(folder, "me"):
        held = json.loads((folder / ".robustlab.lock").read_text())
        assert held["pid"] == os.getpid() and held["command"] == "me"
    assert not (folder / ".robustlab.lock").exists()


def test_a_waiting_lock_waits_for_the_holder(tmp_path: Path) -> None:
    """Cache entries (the dataset cache) wait for their builder instead of stopping."""
    order: list[str] = []
    first = FolderLock(tmp_path, "builder").__enter__()

    def release() -> None:
        time.sleep(0.3)
        order.append("released")
        first.__exit__(None, None, None)

    thread = threading.Thread(target=release)
    thread.start()
    with pytest.raises(RobustlabError, match=f"process {os.getpid()} \\(builder\\)"):
        FolderLock(tmp_path, "impatient").__enter__()
    with FolderLock(tmp_path, "reader", wait=True):
        order.append("acquired")
    thread.join()
    assert order == ["released", "acquired"]


def _robustlab(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "robustlab", *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


READY = """
import sys
from robustlab.cli import main
import robustlab.experiments.executor  # everything imported: the command starts at once
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def _ready(*args: str) -> subprocess.Popen[str]:
    """A robustlab command that has imported everything and starts when told (a newline on
    its standard input): the second writer then meets the first one at work, on any CPU."""
    process = subprocess.Popen(
        [sys.executable, "-c", READY, *args],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _wait_for(path: Path, process: subprocess.Popen[str], limit: float = 120) -> None:
    deadline = time.time() + limit
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the first writer never took its lock"


@pytest.mark.slow
def test_two_writers_of_one_run_one_is_refused_the_other_survives(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "lenet",
        "--width",
        "8",
        "--epochs",
        "25",
        "--pad",
        "0",
        "--batch-size",
        "16",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(run),
    ]
    second = _ready(*args)
    first = _robustlab(*args)
    _wait_for(run / ".robustlab.lock", first)
    _, err = second.communicate("go\n", timeout=300)
    assert second.returncode == 2 and f"is being written by process {first.pid}" in err, err
    first.communicate(timeout=600)
    assert first.returncode == 0
    meta = robustlab.runs.read_meta(run)
    assert meta["complete"] and meta["epoch"] == 25
    robustlab.load(run)


@pytest.mark.slow
def test_two_runs_of_one_spec_count_the_work_once(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("epochs = 1", "epochs = 20"))
    out = tmp_path / "results"
    second = _ready("run", str(spec), "--out", str(out), "--quiet", "--device", "cpu")
    first = _robustlab("run", str(spec), "--out", str(out), "--quiet", "--device", "cpu")
    _wait_for(out / ".robustlab.lock", first)
    _, err = second.communicate("go\n", timeout=300)
    assert second.returncode == 2 and f"process {first.pid}" in err, err
    first.communicate(timeout=600)
    assert first.returncode == 0
    lines = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines()]
    pieces = [(line["kind"], line["name"]) for line in lines]
    assert len(pieces) == len(set(pieces)) and len(pieces) >= 3  # two models, a set, a record
