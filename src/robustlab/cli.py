"""The ``robustlab`` command line: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from robustlab.io import RobustlabError
from robustlab.units import from_255, pgd_budget
from robustlab.version import __version__

if TYPE_CHECKING:  # the command line imports torch-heavy modules only when a command runs
    from robustlab.defenses.training_time import TrainingDefense

Handler = Callable[[argparse.Namespace], int]


def _defect(text: str) -> object:
    from robustlab.models.config import DefectSpec

    try:
        return DefectSpec.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _finite(text: str) -> float:
    """A float option: NaN and infinities are refused here, at the boundary, never later."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _integer(minimum: int, kind: str, example: int) -> Callable[[str], int]:
    """An integer option of at least ``minimum`` (an argparse ``type=``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be a {kind} integer, e.g. {example}")
        return value

    return parse


_positive = _integer(1, "positive", 16)  # counts: images, steps, epochs, batch sizes
_natural = _integer(0, "non-negative", 0)  # seeds, class indices


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(m) for m in text.split(",") if m)
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones {text!r} must be epochs like 3,4") from None


def _adv_train(text: str) -> tuple[float, float, int]:
    try:
        return pgd_budget(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be EPS:STEP:STEPS, e.g. 8:2:7") from None


def _add_data_args(parser: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    parser.add_argument(
        "--dataset", required=dataset_required, help="dataset name (robustlab list)"
    )
    parser.add_argument("--data-dir", help="folder (or archive) holding the dataset's files")
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")


def _add_trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-factory",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="import this model factory when a run's meta.json names it (files never name code "
        "robustlab runs on their own; also ROBUSTLAB_TRUST=A,B); repeatable",
    )


def _add_train_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train a standard or defective model into a run directory")
    _add_data_args(p)
    p.add_argument("--arch", required=True, help="architecture (robustlab list)")
    p.add_argument(
        "--defect", type=_defect, help="defective blocks, BLOCKS:P[:MODE][:xN], e.g. bottom:0.1"
    )
    p.add_argument(
        "--mask-seed", type=_natural, default=0, help="seed of the defect masks (default 0)"
    )
    p.add_argument(
        "--width", type=_positive, help="base width of resnet8/10/18/50, lenet, senet18, wrn"
    )
    p.add_argument(
        "--regularizer", choices=["dropout2d", "dropblock"], help="baseline after block 3"
    )
    p.add_argument(
        "--label-smoothing", type=_finite, default=0.0, help="label smoothing (paper: 0.1)"
    )
    p.add_argument("--thermometer", type=int, help="thermometer-encode the input with L levels")
    p.add_argument(
        "--adv-train",
        type=_adv_train,
        metavar="EPS:STEP:STEPS",
        help="Madry adversarial training with PGD, 0-255 units, e.g. 8:2:7",
    )
    p.add_argument("--epochs", type=_positive, default=5)
    p.add_argument("--batch-size", type=_positive, default=128)
    p.add_argument("--lr", type=_finite, default=0.1)
    p.add_argument("--momentum", type=_finite, default=0.9)
    p.add_argument("--weight-decay", type=_finite, default=5e-4)
    p.add_argument(
        "--schedule",
        choices=["paper", "cosine", "onecycle"],
        default="paper",
        help="learning-rate schedule: the paper's step decay, cosine with warm-up, or one-cycle "
        "(per step; these converge in a few epochs)",
    )
    p.add_argument(
        "--milestones",
        type=_milestones,
        help="paper schedule: epochs where lr ×0.1 (default: 150/350, 250/350 of --epochs)",
    )
    p.add_argument("--pad", type=int, default=4, help="random-crop padding in pixels (0: no crop)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last memory (GPU only: refused on the CPU, where the weight gradients "
        "are not reproducible)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training (GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--train-limit", type=_positive, help="train on a seeded random subset of N images"
    )
    p.add_argument(
        "--test-limit", type=_positive, help="test on a seeded random subset of N images"
    )
    p.add_argument("--seed", type=_natural, default=0, help="seed of initialisation and data order")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="replace an existing run")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_train)


def _training_defenses(args: argparse.Namespace) -> tuple[TrainingDefense, ...]:
    """``robustlab train``'s defense options, through the function spec entries use."""
    from dataclasses import replace

    from robustlab.defenses.registry import training_defenses

    defect = replace(args.defect, seed=args.mask_seed) if args.defect is not None else None
    return training_defenses(
        defect=defect,
        regularizer=args.regularizer,
        thermometer=args.thermometer,
        label_smoothing=args.label_smoothing,
        adv_train=args.adv_train,
    )


def _train(args: argparse.Namespace) -> int:
    from robustlab.experiments.jobs import train_model
    from robustlab.training import FastPath, TrainConfig

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        milestones=args.milestones,
        pad=args.pad,
        flip=not args.no_flip,
        seed=args.seed,
        schedule=args.schedule,
    )
    meta = train_model(
        dataset=args.dataset,
        arch=args.arch,
        out=args.out,
        config=config,
        defenses=_training_defenses(args),
        options={"width": args.width} if args.width is not None else None,
        data_dir=args.data_dir,
        download=args.download,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        resume=args.resume,
        force=args.force,
        device=args.device,
        quiet=args.quiet,
        fast=FastPath(args.channels_last, args.bf16, args.compile),
    )
    accuracy = meta["test_accuracy"]
    print(f"{args.out}: epoch {meta['epoch']}/{config.epochs}, test accuracy {accuracy:.4f}")
    return 0


def _add_eval_clean_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval-clean", help="print a run's clean test accuracy")
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--data-dir", help="override the dataset folder recorded in the run")
    p.add_argument("--limit", type=_positive, help="evaluate a seeded random subset of N images")
    p.add_argument("--device", default="auto")
    _add_trust_arg(p)
    p.set_defaults(handler=_eval_clean)


def _eval_clean(args: argparse.Namespace) -> int:
    from robustlab.experiments.jobs import evaluate_clean

    acc, n = evaluate_clean(
        args.run, split=args.split, data_dir=args.data_dir, limit=args.limit, device=args.device
    )
    print(f"{args.run}: {args.split} accuracy {acc:.4f} ({n} images)")
    return 0


def _add_attack_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "attack",
        help="generate an adversarial set from source run(s)",
        description="Attack source run(s) (several: their averaged logits) and save the set. "
        "eps and step sizes are in 0-255 pixel units, as in the paper.",
    )
    p.add_argument("--source", action="append", required=True, help="source run (repeatable)")
    p.add_argument("--attack", required=True, help="attack name (robustlab list), e.g. pgd")
    p.add_argument(
        "--eps", type=_finite, help="perturbation bound in 0-255 units (fgsm/pgd/mifgsm)"
    )
    p.add_argument("--step", type=_finite, help="step size in 0-255 units (pgd/mifgsm)")
    # the attack-table parameters are checked by the spec's parser (parse_attack), not here
    p.add_argument("--steps", type=int, help="iterations (pgd/mifgsm/cw/boundary)")
    p.add_argument("--random-start", action="store_true", help="pgd: start at a random point")
    p.add_argument("--norm", choices=["linf", "l2"], help="pgd: the ball's norm (default linf)")
    p.add_argument("--decay", type=_finite, help="mifgsm: momentum decay (default 1.0)")
    p.add_argument("--kappa", type=_finite, help="cw: confidence (paper: 20, 40)")
    p.add_argument("--c", type=_finite, help="cw: initial constant (default 1e-3)")
    p.add_argument("--search-steps", type=int, help="cw: binary search rounds (paper: 30)")
    p.add_argument("--lr", type=_finite, help="cw: Adam learning rate (default 0.01)")
    p.add_argument("--max-queries", type=int, help="boundary: query budget per example")
    p.add_argument("--candidates", type=int, help="boundary: proposals per step (default 1)")
    p.add_argument("--sigma", type=_finite, help="noise: standard deviation in 0-255 units")
    p.add_argument("--target", type=_natural, help="targeted attack toward this class")
    _add_data_args(p, dataset_required=False)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=_positive, help="attack a seeded random subset of N images")
    p.add_argument("--seed", type=_natural, default=0, help="seed of the subset and the attack")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--float", action="store_true", help="store float32 images, not uint8")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="adversarial set file (.npz)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--quiet", action="store_true")
    _add_trust_arg(p)
    p.set_defaults(handler=_attack)


_ATTACK_PARAMS = (
    "steps",
    "random_start",
    "norm",
    "decay",
    "kappa",
    "c",
    "search_steps",
    "lr",
    "max_queries",
    "candidates",
)


def _attack(args: argparse.Namespace) -> int:
    from robustlab.experiments.jobs import make_adversarial_set
    from robustlab.experiments.spec import parse_attack

    given = {k: getattr(args, k) for k in (*_ATTACK_PARAMS, "eps", "step", "sigma")}
    # identity checks: `0 in (None, False)` is true, and --steps 0 must reach validation
    table = {k: v for k, v in given.items() if v is not None and v is not False}
    # the spec's attack-table parser: the same units (0-255 for ε, step; σ stays 0-255)
    # and the same checks as [attacks.NAME]
    _, params = parse_attack("robustlab attack:", {"attack": args.attack, **table})
    adv_set = make_adversarial_set(
        sources=args.source,
        attack=args.attack,
        params=params,
        out=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        quantize=not args.float,
        target=args.target,
        force=args.force,
        device=args.device,
        quiet=args.quiet,
    )
    fooled = float(adv_set.fooled_source.mean()) if len(adv_set) else 0.0
    print(
        f"{args.out}: {len(adv_set)} images, fooled the source on {fooled:.1%}, "
        f"median linf {255 * float(np.median(adv_set.linf)):.2f}/255"
    )
    return 0


def _corner(text: str) -> tuple[int, int]:
    try:
        top, left = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be two integers like 1,1") from None
    if top < 0 or left < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a corner is non-negative")
    return top, left


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be numbers like 0.5,0.5,0.5") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text} must be finite numbers")
    return values


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "evaluate",
        help="the verdict on a model: AutoAttack's attacks, failure checks, escalation",
        description="Evaluate any model's robustness: the strong attacks of AutoAttack's "
        "version, the failure checks of the literature, and the escalation their remedies "
        "prescribe, until the checks pass (status reliable or resolved) or the budget is "
        "spent (unreliable). Resumable: run the same command again after an interruption. "
        "--eps is in 0-255 pixel units for linf, in [0, 1] pixel units for l2.",
    )
    p.add_argument("--model", required=True, help="a run folder, or package.module:function")
    p.add_argument("--weights", help="factory models: safetensors or a weights-only state dict")
    p.add_argument("--mean", type=_floats, help="factory models: per-channel mean, e.g. 0.5")
    p.add_argument("--std", type=_floats, help="factory models: per-channel std")
    p.add_argument("--base", help="the undefended base run: transfer checks")
    _add_data_args(p, dataset_required=False)
    p.add_argument("--n", type=_positive, default=1000, help="seeded test images (default 1000)")
    p.add_argument("--eps", type=_finite, default=8.0, help="radius (default 8, i.e. 8/255)")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--version", choices=["standard", "plus", "rand"], default="standard")
    p.add_argument("--budget", choices=["standard", "thorough"], default="standard")
    p.add_argument("--steps", type=_positive, default=100, help="APGD/FAB steps (default 100)")
    p.add_argument("--queries", type=_positive, default=5000, help="Square queries (5000)")
    p.add_argument("--restarts", type=_positive, default=1)
    p.add_argument("--target-classes", type=_positive, default=9)
    p.add_argument("--seed", type=_natural, default=0, help="seed of the images and the attacks")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="folder of the evaluation (resumable)")
    p.add_argument("--report", action="store_true", help="also write report.html")
    p.add_argument("--quiet", action="store_true")
    _add_trust_arg(p)
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from robustlab.evaluation.verdict import EvaluationConfig
    from robustlab.experiments.evaluate import ModelSource, evaluate_model

    eps = from_255(args.eps) if args.norm == "linf" else args.eps
    config = EvaluationConfig(
        eps=eps,
        norm=args.norm,
        version=args.version,
        budget=args.budget,
        steps=args.steps,
        queries=args.queries,
        restarts=args.restarts,
        target_classes=args.target_classes,
    )
    verdict = evaluate_model(
        source=ModelSource(args.model, args.weights, args.mean, args.std),
        config=config,
        out=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        n=args.n,
        seed=args.seed,
        base=args.base,
        device=args.device,
        report=args.report,
        quiet=args.quiet,
        command=args.command_line,
    )
    print(f"{args.out}: {verdict.summary()}")
    return 0


def _add_run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="carry out an experiment spec (TOML): train, attack, evaluate, write tables",
        description="Trains only what is missing, makes each adversarial set once, and writes "
        "results.json/.csv/.md. Interrupted runs continue where they stopped.",
    )
    p.add_argument("spec", help="experiment spec, e.g. specs/fashion-mnist-paper.toml")
    p.add_argument("--out", required=True, help="results directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--report", action="store_true", help="also write RESULTS/report.html")
    p.add_argument("--quiet", action="store_true")
    _add_trust_arg(p)
    p.set_defaults(handler=_run)


def _add_timings_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "timings",
        help="where a run's time went: minutes by kind of work, by protocol, largest pieces",
        description="Sums RESULTS/timings.jsonl, which `robustlab run` appends to as each "
        "model, defense, attack set and result cell finishes (exclusive seconds).",
    )
    p.add_argument("results", help="results directory of `robustlab run`")
    p.add_argument("--top", type=_positive, default=10, help="largest pieces to list")
    p.set_defaults(handler=_timings)


def _timings(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustlab.experiments.timings import summarize

    print("\n".join(summarize(Path(args.results), args.top).lines()))
    return 0


def _run(args: argparse.Namespace) -> int:
    from robustlab.experiments.executor import run_spec
    from robustlab.experiments.spec import load_spec
    from robustlab.report.tables import markdown

    command = f"robustlab run {args.spec} --out {args.out}"
    records = run_spec(
        load_spec(args.spec), args.out, args.device, quiet=args.quiet, command=command
    )
    print(markdown(records))
    print(f"results: {args.out}/results.md, results.csv, results.json")
    print(f"where the time went: robustlab timings {args.out}")
    if args.report:
        from robustlab.report import write_report

        print(f"report: {write_report(args.out)}")
    return 0


def _add_report_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="write a results directory as one self-contained HTML page (+ PNG figures)",
    )
    p.add_argument("results", help="results directory of `robustlab run`")
    p.add_argument("--out", help="HTML file to write (default RESULTS/report.html)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out that is not a robustlab report (never an input)",
    )
    _add_trust_arg(p)
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from robustlab.report import write_report

    print(f"report: {write_report(args.results, args.out, force=args.force)}")
    return 0


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="train small standard and defective models and compare them")
    p.add_argument("--out", default="results/demo", help="results directory (resumable)")
    p.add_argument(
        "--no-download",
        action="store_true",
        help="do not download Fashion-MNIST when it is not installed (fall back to digits)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from robustlab.experiments.demo import run_demo

    print(run_demo(args.out, quiet=args.quiet, device=args.device, download=not args.no_download))
    return 0


def _add_csc_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("csc", help="convolutional sparse coding: learn dictionaries")
    csc = p.add_subparsers(dest="csc_command", required=True)
    learn = csc.add_parser(
        "learn",
        help="learn a convolutional dictionary from a dataset's training images",
        description="Alternates CBPDN sparse coding and projected-gradient dictionary updates "
        "on the high-pass parts of seeded training images; writes OUT/dictionary.safetensors.",
    )
    _add_data_args(learn)
    learn.add_argument(
        "--filters", type=_positive, default=64, help="number of filters M (default 64)"
    )
    learn.add_argument("--size", type=_positive, default=8, help="filter size P (default 8)")
    learn.add_argument("--lmbda", type=_finite, default=0.2, help="sparsity weight λ (default 0.2)")
    learn.add_argument(
        "--images", type=_positive, default=256, help="training images (default 256)"
    )
    learn.add_argument(
        "--iterations", type=_positive, default=50, help="learning rounds (default 50)"
    )
    learn.add_argument(
        "--clusters",
        type=_positive,
        default=1,
        help="k > 1: stratified, one dictionary per cluster",
    )
    learn.add_argument("--seed", type=_natural, default=0)
    learn.add_argument("--device", default="auto")
    learn.add_argument("--out", required=True, help="dictionary folder, e.g. dicts/NAME")
    learn.add_argument("--force", action="store_true", help="replace an existing dictionary")
    learn.set_defaults(handler=_csc_learn)


def _csc_learn(args: argparse.Namespace) -> int:
    from robustlab.defenses.csc import LearnOptions
    from robustlab.experiments.csc import learn_csc_dictionary
    from robustlab.experiments.jobs import resolve_device

    path = learn_csc_dictionary(
        args.dataset,
        args.out,
        args.filters,
        size=args.size,
        lmbda=args.lmbda,
        images=args.images,
        options=LearnOptions(iterations=args.iterations, seed=args.seed),
        clusters=args.clusters,
        data_dir=args.data_dir,
        download=args.download,
        device=resolve_device(args.device),
        force=args.force,
        command=args.command_line,
    )
    print(f"dictionary: {path}")
    return 0


def _add_purify_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "purify",
        help="reconstruct every image of a folder with a CSC dictionary (folder to folder)",
        description="Writes each image of IN_DIR to OUT_DIR under the same relative name. "
        "Existing outputs are skipped (resumable); inputs are never written.",
    )
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--dict",
        required=True,
        help="dictionary folder (robustlab csc learn), or a .npy file as the CSC release ships "
        "them: (P, P, C, M) or (P, P, M), sporco's layout",
    )
    p.add_argument(
        "--channel-order",
        choices=["bgr", "rgb"],
        help="channel order of a .npy dictionary (default bgr: the release reads with OpenCV)",
    )
    p.add_argument("--lmbda", type=_finite, help="sparsity weight λ (default: the dictionary's)")
    p.add_argument("--size", type=_positive, help="resize images to SIZE × SIZE first")
    p.add_argument(
        "--resize",
        choices=["antialias", "authors"],
        default="antialias",
        help="how --size resizes: bilinear with antialiasing (default), or as the CSC release "
        "does (OpenCV INTER_LINEAR on uint8, no antialiasing; differs when shrinking)",
    )
    p.add_argument(
        "--grey",
        action="store_true",
        help="with a grey dictionary, convert colour images to grey (refused otherwise)",
    )
    p.add_argument("--max-iter", type=_positive, default=200, help="ADMM iterations (default 200)")
    p.add_argument(
        "--force",
        action="store_true",
        help="redo every image, also when OUT_DIR holds images purified with other settings",
    )
    p.add_argument("--rel-tol", type=_finite, default=5e-3, help="stopping tolerance (5e-3)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="fuse the solver's element-wise work with torch.compile (faster after a "
        "compilation of 8-20 s; needs a C++ compiler)",
    )
    p.add_argument(
        "--rescale",
        choices=["clip", "max"],
        default="clip",
        help="clip to [0, 1] (default) or divide by the image maximum like the released code",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_purify)


def _purify(args: argparse.Namespace) -> int:
    from robustlab.defenses.csc import CBPDNOptions, CSCPurifier
    from robustlab.experiments.csc import purify_folder
    from robustlab.experiments.jobs import resolve_device

    options = CBPDNOptions(max_iter=args.max_iter, rel_tol=args.rel_tol, compile=args.compile)
    purifier = CSCPurifier(
        args.dict, args.lmbda, options, rescale=args.rescale, channel_order=args.channel_order
    )
    done, skipped = purify_folder(
        args.in_dir,
        args.out_dir,
        purifier,
        size=args.size,
        resize=args.resize,
        grey=args.grey,
        device=resolve_device(args.device),
        quiet=args.quiet,
        force=args.force,
    )
    print(f"purified {done} images into {args.out_dir} ({skipped} already there)")
    return 0


def _layers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give layer names, e.g. blocks.0.0,blocks.1.conv1")
    return names


def _universal_attack(name: str) -> str:
    """A name of the universal-attack registry (looked up when the option is parsed, so
    --help stays quick and there is no second list of names to keep)."""
    from robustlab.attacks.universal import UNIVERSAL_ATTACKS

    if name not in UNIVERSAL_ATTACKS:
        raise argparse.ArgumentTypeError(
            f"unknown universal attack {name!r}; choose one of {', '.join(UNIVERSAL_ATTACKS)}"
        )
    return name


def _add_sfr_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sfr", help="selective feature regeneration against universal attacks")
    sfr = p.add_subparsers(dest="sfr_command", required=True)
    layers = sfr.add_parser(
        "layers", help="list a run's Conv2d layer names; 'auto' marks those layers = \"auto\" picks"
    )
    layers.add_argument("run")
    _add_trust_arg(layers)
    layers.set_defaults(handler=_sfr_layers)
    train = sfr.add_parser(
        "train",
        help="add feature regeneration units to a run and train them",
        description="Computes --uaps universal perturbations against the run, then trains FRUs "
        "(baseline frozen) on batches of clean + synthesised perturbed images.",
    )
    train.add_argument("run", help="run directory of the baseline model")
    train.add_argument("--layers", type=_layers, required=True, help="comma-separated Conv2d names")
    train.add_argument(
        "--attack", default="uap", type=_universal_attack, help="universal attack (robustlab list)"
    )
    train.add_argument("--xi", type=_finite, default=10.0, help="ℓ∞ radius in 0-255 units (10)")
    train.add_argument("--uaps", type=_positive, default=3, help="precomputed perturbations (3)")
    train.add_argument(
        "--attack-images", type=_positive, default=256, help="images per perturbation"
    )
    train.add_argument("--train-limit", type=_positive, default=5000, help="training images (5000)")
    train.add_argument("--epochs", type=_positive, default=3)
    train.add_argument("--batch-size", type=_positive, default=64)
    train.add_argument("--lr", type=_finite, default=1e-3)
    train.add_argument("--fraction", type=_finite, default=0.5, help="channels regenerated (0.5)")
    train.add_argument("--seed", type=_natural, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--out", required=True, help="SFR directory to write")
    train.add_argument("--force", action="store_true")
    train.add_argument("--quiet", action="store_true")
    _add_trust_arg(train)
    train.set_defaults(handler=_sfr_train)
    ev = sfr.add_parser(
        "eval",
        help="fooling rate and restoration accuracy of baseline and defended model",
        description="With --input IMAGE: classify one image, clean and perturbed, with the "
        "defense on or off.",
    )
    ev.add_argument("sfr_dir", metavar="RUN_SFR")
    ev.add_argument(
        "--attack", default="uap", type=_universal_attack, help="universal attack (robustlab list)"
    )
    ev.add_argument("--xi", type=_finite, default=10.0, help="ℓ∞ radius in 0-255 units (10)")
    ev.add_argument(
        "--perturbation",
        metavar="FILE",
        help="evaluate this perturbation (robustlab format, e.g. from `robustlab universal "
        "import`) instead of computing --attack",
    )
    ev.add_argument(
        "--against",
        choices=["baseline", "defended"],
        default="baseline",
        help="model the perturbation is computed on (defended: white-box secondary attack)",
    )
    ev.add_argument("--defense", choices=["on", "off"], default="on", help="for --input")
    ev.add_argument("--input", help="an image file to classify")
    ev.add_argument("--n", type=_positive, default=1000, help="test images (1000)")
    ev.add_argument("--seed", type=_natural, default=0)
    ev.add_argument("--device", default="auto")
    _add_trust_arg(ev)
    ev.set_defaults(handler=_sfr_eval)


def _sfr_layers(args: argparse.Namespace) -> int:
    from robustlab.defenses.regeneration import auto_layers, conv_layers
    from robustlab.runs import load

    model = load(args.run)
    chosen = auto_layers(model)
    for name in conv_layers(model):
        conv = model.get_submodule(name)
        mark = "\tauto" if name in chosen else ""
        print(f"{name}\t{conv.in_channels}->{conv.out_channels}{mark}")  # type: ignore[union-attr]
    return 0


def _sfr_train(args: argparse.Namespace) -> int:
    from robustlab.experiments.jobs import resolve_device
    from robustlab.experiments.sfr import train_sfr

    meta = train_sfr(
        args.run,
        args.out,
        args.layers,
        attack=args.attack,
        xi=from_255(args.xi),
        uaps=args.uaps,
        attack_images=args.attack_images,
        train_limit=args.train_limit,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        fraction=args.fraction,
        seed=args.seed,
        device=resolve_device(args.device),
        force=args.force,
        quiet=args.quiet,
        command=args.command_line,
    )
    losses = ", ".join(f"{h['loss']:.3f}" for h in meta["history"])
    print(f"SFR: {args.out} (FRUs on {', '.join(args.layers)}; loss per epoch {losses})")
    return 0


def _sfr_eval(args: argparse.Namespace) -> int:
    from robustlab.experiments.jobs import resolve_device
    from robustlab.experiments.sfr import classify_image, evaluate_sfr

    device = resolve_device(args.device)
    if args.input:
        print(
            classify_image(
                args.sfr_dir,
                args.input,
                args.attack,
                xi=from_255(args.xi),
                defense=args.defense == "on",
                against=args.against,
                seed=args.seed,
                device=device,
                perturbation_file=args.perturbation,
            )
        )
        return 0
    result = evaluate_sfr(
        args.sfr_dir,
        args.attack,
        from_255(args.xi),
        against=args.against,
        n=args.n,
        seed=args.seed,
        device=device,
        perturbation_file=args.perturbation,
    )
    # a file's perturbation has no ξ of its own (it may be an ℓ2 one): both its norms
    strength = (
        f"ℓ∞={255 * result['linf']:.4g}/255 ℓ2={255 * result['l2']:.4g}/255"
        if result["against"] == "imported"
        else f"ξ={255 * result['xi']:.4g}/255"
    )
    print(f"{result['attack']} {strength} against the {result['against']}, n={result['n']}")
    print("| model | clean top-1 | perturbed top-1 | fooling rate | restoration accuracy |")
    print("|---|---|---|---|---|")
    for name in ("baseline", "defended"):
        r = result[name]
        print(
            f"| {name} | {100 * r['clean']:.1f}% | {100 * r['perturbed']:.1f}% | "
            f"{100 * r['fooling_rate']:.1f}% | {r['restoration']:.3f} |"
        )
    return 0


def _add_universal_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from robustlab.attacks.universal.importing import LAYOUTS

    p = sub.add_parser("universal", help="universal perturbations from other code")
    universal = p.add_subparsers(dest="universal_command", required=True)
    imp = universal.add_parser(
        "import",
        help="read a released perturbation (.h5/.npy) into robustlab's format",
        description="Reshapes by --layout, reorders channels to RGB, multiplies by --scale to "
        "0-255 units, centre-crops to --crop and writes OUT (safetensors, [0, 1] units). "
        "SFR release, as its scripts read the files: UAP .h5: --layout matlab "
        "--channel-order bgr; sPGD .h5: --layout h5 --channel-order bgr; Singular Fool .h5: "
        "the same with --crop 224 --crop-at 1,1; GAP .h5: --layout h5 --channel-order rgb "
        "--scale 16 --crop 224 --crop-at 30,30; NAG .npy: --layout hwc --channel-order rgb; "
        "FFF .npy: the same with --crop 224 --crop-at 0,0; GUAP .npy: --layout hwc "
        "--channel-order rgb --scale 1.5. docs/sfr.md lists every file.",
    )
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--layout", required=True, choices=LAYOUTS)
    imp.add_argument("--channel-order", required=True, choices=["bgr", "rgb"])
    imp.add_argument("--scale", type=_finite, default=1.0, help="factor to 0-255 units (1)")
    imp.add_argument("--crop", type=_positive, help="centre crop to CROP x CROP")
    imp.add_argument(
        "--crop-at",
        type=_corner,
        metavar="TOP,LEFT",
        help="the crop's top-left corner instead of the centre (e.g. 1,1)",
    )
    imp.add_argument("--dataset", help="HDF5 dataset name (default: the file's only one)")
    imp.add_argument("--out", required=True, help="output file, e.g. uap-resnet50.safetensors")
    imp.add_argument("--force", action="store_true", help="replace an existing OUT (not FILE)")
    imp.set_defaults(handler=_universal_import)


def _universal_import(args: argparse.Namespace) -> int:
    from robustlab.attacks.universal.importing import import_perturbation
    from robustlab.io import prepare_output

    out = prepare_output(args.out, args.force, inputs=[args.file])
    found = import_perturbation(
        args.file,
        args.layout,
        channel_order=args.channel_order,
        scale=args.scale,
        crop=args.crop,
        crop_at=args.crop_at,
        dataset=args.dataset,
    )
    found.save(out)
    shape = "x".join(str(d) for d in found.delta.shape)
    l2 = 255 * float(found.delta.norm())
    print(f"{out}: {shape}, ℓ∞ = {255 * float(found.delta.abs().max()):.2f}/255, ℓ2 = {l2:.1f}/255")
    return 0


def _add_list_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "list",
        help="list architectures, datasets, attacks, universal attacks and defenses",
        description="Every name the registries hold; with PATTERN (shell style, e.g. 'res*'), "
        "the matching ones.",
    )
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    p.set_defaults(handler=_list)


def _list(args: argparse.Namespace) -> int:
    from robustlab import attacks, data, models
    from robustlab.attacks.universal import UNIVERSAL_ATTACKS
    from robustlab.defenses import registry

    pattern = args.pattern
    lists = {
        "architectures": models.available(pattern),
        "datasets": data.available(pattern),
        "attacks": attacks.available(pattern),
        "universal attacks": UNIVERSAL_ATTACKS.names(pattern),
        **{
            f"{kind} defenses (spec keys)": fnmatch.filter(spellings, pattern)
            for kind, spellings in registry.available().items()
        },
    }
    for kind, names in lists.items():
        if names or pattern == "*":
            print(f"{kind}:", ", ".join(names))
    return 0


def _trusted(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """The factories named by --trust-factory, trusted while the command runs."""
    if not getattr(args, "trust_factory", None):
        return contextlib.nullcontext()  # and no torch import for commands that load no model
    from robustlab.models.external import trusting

    return trusting(args.trust_factory)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustlab",
        description="Defenses against adversarial perturbations, and the attacks that test them.",
    )
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also: ROBUSTLAB_DEBUG=1), for bug reports",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        _add_train_parser,
        _add_eval_clean_parser,
        _add_attack_parser,
        _add_evaluate_parser,
        _add_run_parser,
        _add_timings_parser,
        _add_report_parser,
        _add_demo_parser,
        _add_csc_parser,
        _add_purify_parser,
        _add_sfr_parser,
        _add_universal_parser,
        _add_list_parser,
    )
    for add in commands:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["robustlab", *argv])  # recorded in files the command writes
    handler: Handler = args.handler
    from robustlab import allocator, distributed

    allocator.keep_freed_memory()  # freed memory stays mapped: no page faults per op (glibc)

    if distributed.init_from_env() and not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (one printer: rank 0)
    debug = debug or os.environ.get("ROBUSTLAB_DEBUG", "") not in ("", "0")
    try:
        with _trusted(args):
            return handler(args)
    except (RobustlabError, ValueError) as err:
        if debug:
            raise
        print(f"robustlab: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `robustlab ... | head`: the reader left, nothing went wrong here
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no second error when Python flushes)
        return 0
    except OSError as err:  # read-only or full disk, a path that is a file, a missing file
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"robustlab: error: {where}{err.strerror or err}; check the path, its "
            "permissions and the free space (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        how = {
            "train": "run the same command with --resume to continue",
            "run": "run the same command again: it continues from the files already written",
            "evaluate": "run the same command again: it continues after the last finished attack",
            "demo": "run the same command again: it continues from the files already written",
            "purify": "run the same command again: it skips the images already purified",
            "sfr": "run the same command again: it reuses the perturbations already made",
        }.get(args.command, "nothing half-written was left; run the same command again")
        print(f"robustlab: interrupted; {how}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
