"""``robustlab demo``: the packaged demo spec, run by the same executor as ``robustlab run``.

A source, a standard and a ``bottom:0.1`` defective ResNet-8 are trained on 20,000
Fashion-MNIST images (fetched with its published checksums when it is not installed), CSC
purification and SFR are prepared around the standard model, FGSM and PGD adversarial sets
are made once on the source, and the transfer table, the Gaussian-noise curve, the verdicts
of the standard, defective, CSC and SFR models (robust accuracy as an upper bound, with the
status of its failure checks) and the HTML report are written under the output folder.
Running it again reuses everything it finished.

Only when Fashion-MNIST can be neither found nor downloaded does the demo fall back to
scikit-learn's 8×8 digits, says so loudly, and says why its table is no test of the paper.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from robustlab.data import load_dataset
from robustlab.evaluation.protocols.base import Record
from robustlab.evaluation.protocols.tables import curve_levels
from robustlab.evaluation.stats import Rate, RateRecord
from robustlab.experiments.executor import run_spec
from robustlab.experiments.spec import Spec, parse_spec, parse_toml
from robustlab.io import JSONObject, RobustlabError
from robustlab.report import write_report

FIX = "sudo apt-get install dataset-fashion-mnist, or run `robustlab demo` with network access"
DIGITS_CAVEAT = (
    "These numbers are on scikit-learn's 8×8 digits, not Fashion-MNIST: at 8×8 pixels the "
    "bottom layers' masks remove most of what little shape there is, and the paper makes no "
    "claim for such images. Do not read this table as a test of the defense."
)


def fashion_mnist_problem(download: bool = True) -> str | None:
    """None when Fashion-MNIST can be loaded (found, or downloaded and checked), else why not."""
    try:
        for split in ("train", "test"):
            load_dataset("fashion-mnist", split, download=download)
    except RobustlabError as err:
        return str(err)
    return None


DICTIONARY = "dicts/fashion-mnist-64x8"  # the CSC model's dictionary, shipped in the repository


def demo_spec(dataset: str) -> Spec:
    """The packaged demo spec, adapted to ``dataset`` (``fashion-mnist`` or ``digits``): the
    CSC model reads the repository's Fashion-MNIST dictionary (found from the working
    directory or the source tree) and sits out where there is none or the data is digits."""
    text = resources.files("robustlab.experiments").joinpath("specs/demo.toml").read_text()
    raw = parse_toml(text)
    if dataset == "digits":  # 8×8 images: no crop padding, the whole (small) train split
        raw["experiment"].update(dataset="digits", n=360)
        raw["train"].update(pad=0, epochs=15)
        del raw["train"]["train_limit"]
    found = dictionary_folder()
    if dataset == "digits" or found is None:
        _drop_model(raw, "csc")
    else:
        raw["models"]["csc"]["purify"]["dict"] = str(found)
    return parse_spec(raw)


def dictionary_folder() -> Path | None:
    """The shipped CSC dictionary, from the working directory or the source tree."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / DICTIONARY / "dictionary.safetensors").is_file():
            return root / DICTIONARY
    return None


def _drop_model(raw: JSONObject, name: str) -> None:
    """The spec without model ``name`` (and without the protocols left with no model)."""
    del raw["models"][name]
    kept = []
    for protocol in raw["protocols"]:
        for key in ("models", "targets"):
            if key in protocol:
                protocol[key] = [m for m in protocol[key] if m != name]
        if protocol.get("models", protocol.get("targets")) != []:
            kept.append(protocol)
    raw["protocols"] = kept


def run_demo(
    out: str | Path, *, quiet: bool = False, device: str = "auto", download: bool = True
) -> str:
    """Run the demo spec into ``out`` and write its report; return the summary to print."""
    problem = fashion_mnist_problem(download)
    dataset = "fashion-mnist" if problem is None else "digits"
    if problem is not None:
        print(
            f"robustlab demo: WARNING: Fashion-MNIST is not available ({problem}); running on "
            f"scikit-learn's 8×8 digits instead, which cannot show the paper's effect. Fix: {FIX}",
            file=sys.stderr,
        )
    elif not quiet:
        print("demo dataset: fashion-mnist")
    spec = demo_spec(dataset)
    if "csc" not in spec.models and dataset == "fashion-mnist":
        print(
            f"robustlab demo: note: no CSC dictionary at {DICTIONARY} (run from the "
            "repository); the demo runs without the CSC model",
            file=sys.stderr,
        )
    records = run_spec(spec, out, device=device, quiet=quiet)
    report = write_report(out)
    summary = summarize(records, dataset)
    return f"{summary}\nreport: {report}"


def summarize(records: list[Record], dataset: str) -> str:
    """Per attack and noise level: the standard vs the defective model, with 95 % intervals."""
    name = "Fashion-MNIST" if dataset == "fashion-mnist" else "scikit-learn digits (8×8)"
    lines = [f"Summary ({name}): standard vs defective (bottom:0.1), CSC and SFR", ""]
    transfer = [r for r in records if r["protocol"] == "transfer"]
    by_cell = {(r["attack"], r["target"]): r for r in transfer}
    attacks = list(dict.fromkeys(r["attack"] for r in transfer))
    if attacks:
        first = by_cell.get((attacks[0], "standard")), by_cell.get((attacks[0], "defective"))
        if first[0] and first[1]:
            lines.append(
                f"  clean accuracy      standard {_rate(first[0]['clean_accuracy'])}   "
                f"defective {_rate(first[1]['clean_accuracy'])}"
            )
        lines.append("  transfer from an independently trained source (success defense rate):")
    for attack in attacks:
        standard, defective = by_cell.get((attack, "standard")), by_cell.get((attack, "defective"))
        if standard and defective:
            lines.append(
                f"    {attack:<8}          standard {_rate(standard['defense_rate'])}   "
                f"defective {_rate(defective['defense_rate'])}"
            )
    for record in (r for r in records if r["protocol"] == "noise"):
        curves = record["curves"]
        if {"standard", "defective"} <= set(curves):
            lines.append("  Gaussian noise (accuracy on images both classify correctly):")
            for level in curve_levels(record):
                lines.append(
                    f"    σ={float(level):<5g}           standard "
                    f"{_rate(curves['standard'][level])}   defective "
                    f"{_rate(curves['defective'][level])}"
                )
    verdicts = [r for r in records if r["protocol"] == "verdict"]
    if verdicts:
        lines.append(
            f"  verdicts at eps={verdicts[0]['eps']:g}/255 (robust accuracy, an upper bound; "
            "the status of its failure checks):"
        )
    for record in verdicts:
        deciding = f" ({record['deciding']})" if record["deciding"] else ""
        lines.append(
            f"    {record['target']:<18}{_rate(record['robust'])}   {record['status']}{deciding}"
        )
    if dataset != "fashion-mnist":
        lines += ["", f"WARNING: {DIGITS_CAVEAT} Fix: {FIX}"]
    return "\n".join(lines)


def _rate(data: RateRecord) -> str:
    rate = Rate(data["hits"], data["n"])
    low, high = rate.interval
    return f"{100 * rate.value:5.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
