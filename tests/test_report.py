"""The HTML report: self-contained, every link resolves, figures drawn, renders in Chromium."""

import base64
import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from robustlab.cli import main
from robustlab.experiments.executor import run_spec
from robustlab.experiments.spec import load_spec
from robustlab.io import RobustlabError
from robustlab.report import figures, write_report
from robustlab.report.figures import is_blank
from robustlab.report.records import record_problem
from tests.files import CHROMIUM, chromium

TINY = Path(__file__).parent / "specs" / "tiny.toml"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    run_spec(load_spec(TINY), results, device="cpu", quiet=True)
    return write_report(results)


def test_report_is_self_contained_and_links_resolve(report: Path) -> None:
    page = report.read_text()
    assert "<table>" in page and page.count('src="data:image/png;base64,') >= 5
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    ids = set(re.findall(r'id="([^"]+)"', page))
    targets = set(re.findall(r'href="#([^"]+)"', page))
    assert targets and targets <= ids, f"dangling links: {sorted(targets - ids)[:5]}"
    assert "spec-protocols-0" in targets and "spec-attacks-pgd16" in targets
    assert "robustlab run" in page and "[" in page  # the command and intervals are shown


def test_figures_are_written_and_not_blank(report: Path) -> None:
    pngs = sorted((report.parent / "report_figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"transfer_fgsm16", "noise_0", "shuffle_0", "gallery"} <= names
    assert not [p.name for p in pngs if is_blank(p.read_bytes())]
    inline = re.findall(r'src="data:image/png;base64,([^"]+)"', report.read_text())
    assert not any(is_blank(base64.b64decode(data)) for data in inline)


def test_blank_detection() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(buffer, format="PNG")
    assert is_blank(buffer.getvalue())


def test_report_errors_and_cli(tmp_path: Path, report: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(RobustlabError, match=r"no results\.json"):
        write_report(tmp_path)
    assert main(["report", str(report.parent), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r_figures" / "gallery.png").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_every_record_fits_its_schema_and_a_damaged_one_is_named(
    report: Path, tmp_path: Path
) -> None:
    results = json.loads((report.parent / "results.json").read_text())
    protocols = {r["protocol"] for r in results["records"]}
    assert {"transfer", "whitebox", "decision", "noise", "shuffle", "summary"} <= protocols
    assert all(record_problem(r) is None for r in results["records"])
    damaged = copy.deepcopy(results)
    index = next(i for i, r in enumerate(damaged["records"]) if r["protocol"] == "whitebox")
    del damaged["records"][index]["accuracy"]
    (tmp_path / "results.json").write_text(json.dumps(damaged))
    with pytest.raises(
        RobustlabError, match=rf"record {index}: whitebox record without 'accuracy'"
    ):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()  # nothing half-written
    bad_rate = {**results["records"][index], "accuracy": {"rate": 0.5}}
    assert "accuracy is not a rate" in str(record_problem(bad_rate))
    assert record_problem({"protocol": "magic"}) == "unknown protocol 'magic'"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    url = report.resolve().as_uri()
    shot = report.parent / "report_screenshot.png"
    run = chromium(url, tmp_path / "profile", "--window-size=1200,1600", f"--screenshot={shot}")
    assert shot.is_file() and not is_blank(shot.read_bytes())
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = chromium(url, tmp_path / "profile", "--dump-dom").stdout
    assert dom.count("<table>") >= 4 and dom.count("<img ") >= 5


def test_report_of_a_spec_whose_data_lives_in_its_own_folder(
    tmp_path: Path, idx_dir: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = idx_dir  # MNIST-format files in a folder no default search looks at
    spec = tmp_path / "custom.toml"
    spec.write_text(
        "[experiment]\ndataset = 'mnist'\nn = 12\n"
        f"data_dir = '{folder.name}'\n"  # relative to the working directory
        "[train]\narch = 'lenet'\nwidth = 4\nepochs = 1\npad = 0\nbatch_size = 20\n"
        "[models.standard]\n[models.source]\nseed = 1\n"
        "[attacks.fgsm16]\nattack = 'fgsm'\neps = 16\n"
        "[[protocols]]\ntype = 'transfer'\nsources = ['source']\ntargets = ['standard']\n"
        "attacks = ['fgsm16']\n"
    )
    monkeypatch.chdir(folder.parent)
    out = tmp_path / "results"
    assert (
        main(["run", str(spec), "--out", str(out), "--report", "--quiet", "--device", "cpu"]) == 0
    )
    assert "<table>" in (out / "report.html").read_text()
    monkeypatch.chdir(tmp_path.parent)  # later commands, from elsewhere, find the data too
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


def test_the_report_reads_records_not_the_spec(
    report: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec copy in results.json is shown, never interpreted: with it replaced by an
    unrelated table, titles come from results.json's protocols and the keep-probability
    figure's points from its models (the defective model labelled by its masks)."""
    results = tmp_path / "results"
    shutil.copytree(report.parent, results, ignore=shutil.ignore_patterns("report*"))
    data = json.loads((report.parent / "results.json").read_text())
    assert [p["type"] for p in data["protocols"]][:2] == ["transfer", "ensemble_transfer"]
    data["protocols"][0]["name"] = "Transfers from the source"
    (results / "results.json").write_text(json.dumps({**data, "spec": {"unrelated": {}}}))
    points: list[tuple[str, float, float]] = []
    draw = figures.tradeoff

    def tradeoff(found: list[tuple[str, float, float]], attack: str) -> bytes:
        points.extend(found)
        return draw(found, attack)

    monkeypatch.setattr(figures, "tradeoff", tradeoff)
    page = write_report(results).read_text()
    assert "<h3>Transfers from the source</h3>" in page
    assert sorted(label for label, _, _ in points) == ["p=0.5 bottom", "standard (p=1)"]
    assert (results / "report_figures" / "gallery.png").is_file()
