"""The ``robustlab`` command line: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from robustlab import __version__
from robustlab.io import RobustlabError

Handler = Callable[[argparse.Namespace], int]


def _defect(text: str) -> object:
    from robustlab.defenses.defective import DefectSpec

    try:
        return DefectSpec.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(m) for m in text.split(",") if m)
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones {text!r} must be epochs like 3,4") from None


def _add_data_args(parser: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    parser.add_argument(
        "--dataset", required=dataset_required, help="dataset name (robustlab list)"
    )
    parser.add_argument("--data-dir", help="folder (or archive) holding the dataset's files")
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train a standard or defective model into a run directory")
    _add_data_args(p)
    p.add_argument("--arch", required=True, help="architecture (robustlab list)")
    p.add_argument(
        "--defect", type=_defect, help="defective blocks, BLOCKS:P[:MODE][:xN], e.g. bottom:0.1"
    )
    p.add_argument("--mask-seed", type=int, default=0, help="seed of the defect masks (default 0)")
    p.add_argument("--width", type=int, help="base width of resnet8/10/18/50, lenet, senet18, wrn")
    p.add_argument(
        "--regularizer", choices=["dropout2d", "dropblock"], help="baseline after block 3"
    )
    p.add_argument(
        "--label-smoothing", type=float, default=0.0, help="label smoothing (paper: 0.1)"
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument(
        "--milestones", type=_milestones, help="epochs where lr ×0.1 (default: 150/350, 250/350)"
    )
    p.add_argument("--pad", type=int, default=4, help="random-crop padding in pixels (0: no crop)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--train-limit", type=int, help="train on a seeded random subset of N images")
    p.add_argument("--test-limit", type=int, help="test on a seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="replace an existing run")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from robustlab.experiments.jobs import train_model
    from robustlab.training import TrainConfig

    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, milestones=args.milestones,
        label_smoothing=args.label_smoothing, pad=args.pad, flip=not args.no_flip, seed=args.seed,
    )  # fmt: skip
    defect = replace(args.defect, seed=args.mask_seed) if args.defect is not None else None
    meta = train_model(
        dataset=args.dataset, arch=args.arch, out=args.out, config=config, defect=defect,
        regularizer=args.regularizer, options={"width": args.width} if args.width else None,
        data_dir=args.data_dir, download=args.download, train_limit=args.train_limit,
        test_limit=args.test_limit, resume=args.resume, force=args.force, device=args.device,
        quiet=args.quiet,
    )  # fmt: skip
    accuracy = meta["test_accuracy"]
    print(f"{args.out}: epoch {meta['epoch']}/{config.epochs}, test accuracy {accuracy:.4f}")
    return 0


def _add_eval_clean_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("eval-clean", help="print a run's clean test accuracy")
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--data-dir", help="override the dataset folder recorded in the run")
    p.add_argument("--limit", type=int, help="evaluate a seeded random subset of N images")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=_eval_clean)


def _eval_clean(args: argparse.Namespace) -> int:
    from robustlab.experiments.jobs import evaluate_clean

    acc, n = evaluate_clean(
        args.run, split=args.split, data_dir=args.data_dir, limit=args.limit, device=args.device
    )
    print(f"{args.run}: {args.split} accuracy {acc:.4f} ({n} images)")
    return 0


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="train small standard and defective models and compare them")
    p.add_argument("--out", default="results/demo", help="results directory (resumable)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from robustlab.experiments.demo import run_demo

    print(run_demo(args.out, quiet=args.quiet))
    return 0


def _add_list_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="list architectures and datasets")
    p.set_defaults(handler=_list)


def _list(_: argparse.Namespace) -> int:
    from robustlab import data, models

    print("architectures:", ", ".join(models.available()))
    print("datasets:", ", ".join(data.available()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustlab",
        description="Defenses against adversarial perturbations, and the attacks that test them.",
    )
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train_parser, _add_eval_clean_parser, _add_demo_parser, _add_list_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (RobustlabError, ValueError) as err:
        print(f"robustlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "robustlab: interrupted; run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
