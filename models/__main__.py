"""``python -m models``: train, evaluate, cross-validate, test under acquisition shifts,
reproduce the seed paper, benchmark, and create keys for, sign and verify bundles.

TensorFlow is imported only by the sub-commands that train or convert.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models import bundle_cli
from models.core.adapt import MODES
from models.core.bundle import check_bundle_target
from models.core.cli import at_least, json_out, positive_int, sparsity
from models.core.metrics import json_safe
from models.core.signing import load_signing_key

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_bundle"
REPORT_KEYS = ("n", "accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity",
               "f1", "brier", "ece", "threshold")


def _dump(obj: dict, path: str | None = None) -> None:
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False)
    if path:
        Path(path).write_text(text + "\n")
    else:
        print(text)


def cmd_train(args: argparse.Namespace) -> int:
    key = load_signing_key(args.sign_key)
    check_bundle_target(args.out)  # before training, not after it
    if args.float_out and not args.float_out.endswith(".weights.h5"):
        raise ValueError(f"--float-out must end in .weights.h5: {args.float_out}")
    from models.training.build import BuildConfig, build_bundle
    cfg = BuildConfig.for_arch(args.arch, args.epochs, args.seed, dict(args.set))
    if args.sparsity is not None:
        cfg.sparsity = args.sparsity
    manifest = build_bundle(args.data, args.out, key, cfg, verbose=2, float_out=args.float_out,
                            loso=args.loso)
    print(f"wrote {args.out} (version {manifest['version']}, signer {manifest['signer']})")
    _print_metrics(manifest["metrics"]["test"], "held-out test split")
    refused = manifest["metrics"]["slice_check"]
    if "reason" in refused:
        print(f"not a brain MRI slice check {refused['reason']}")
    else:
        print(f"not a brain MRI slice: refused {refused['negatives_refused_all']:.1%} of "
              f"drawn negatives; of the test slices, per site: " + ", ".join(
                  f"{k[5:]} {v:.1%}" for k, v in refused["slices_refused"].items()))
    if manifest["data"]["license_note"]:
        print(manifest["data"]["license_note"])
    return 0


def _print_metrics(result: dict, title: str) -> None:
    print(f"{title}:")
    for k in REPORT_KEYS:
        if k in result:
            v = result[k]
            print(f"  {k:<18} {v:.4f}" if isinstance(v, float) else f"  {k:<18} {v}")
    c = result.get("confusion")
    if c:
        print(f"  confusion          tn={c['tn']} fp={c['fp']} fn={c['fn']} tp={c['tp']}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.training.evaluate import evaluate_bundle
    result, labels, prob = evaluate_bundle(args.model, args.data, args.split)
    if args.plots:
        from models.training.plots import write_all
        write_all(labels, prob, result["threshold"], args.plots)
    if args.json:
        _dump(result)
    else:
        _print_metrics(result, f"bundle v{result['model_version']} ({result['architecture']}) "
                               f"on {args.split} files of {args.data}, via LiteRT")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from models.training.architectures import DEFAULT_ARCH
    from models.training.cv import REVIEW_MARGIN, cross_validate
    from models.training.shifts import SHIFTS, format_report
    from models.training.train import recipe
    arch = args.arch or DEFAULT_ARCH
    shifts = list(SHIFTS) if args.shifts else []
    cfg = recipe(arch, args.seed, args.epochs, dict(args.set))
    result = cross_validate(args.data, arch, args.folds, cfg, shifts=shifts,
                            jobs=args.folds if args.jobs is None else args.jobs,
                            site=args.cv_site)
    for k in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity"):
        print(f"{k:<18} {result[k + '_mean']:.3f} ± {result[k + '_std']:.3f}")
    if result["review"]:
        print(f"for label review ({len(result['review'])} files, the out-of-fold probability "
              f"contradicts the label by >= {REVIEW_MARGIN}):")
        for r in result["review"]:
            print(f"  {r['file']:<24} label {r['label']}  probability {r['probability']:.3f}")
    if shifts:
        print("out-of-fold decisions under acquisition shifts (each fold's threshold):")
        print(format_report(result["shifts"]))
    if args.json:
        _dump(result, args.json)
    return 0


def cmd_loso(args: argparse.Namespace) -> int:
    from models.training.architectures import DEFAULT_ARCH
    from models.training.loso import format_table, leave_one_site_out
    from models.training.train import recipe
    if args.rescore:
        from models.training.loso import rescore
        with open(args.rescore, encoding="utf-8") as fh:
            saved = json.load(fh)
        result = rescore(saved, args.data, args.threshold)
        print(format_table(result))
        if args.json:
            _dump(result, args.json)
        return 0
    arch = args.arch or DEFAULT_ARCH
    cfg = recipe(arch, args.seed, args.epochs, dict(args.set))
    result = leave_one_site_out(args.data, arch, cfg, args.holdout, jobs=args.jobs or 1)
    print(format_table(result))
    if args.json:
        _dump(result, args.json)
    return 0


def cmd_adapt_modes(args: argparse.Namespace) -> int:
    from models.core.head_training import TrainConfig
    from models.training.adaptation_modes import CLINICS, SHORT, Replay, compare, summary
    replay = Replay(TrainConfig() if args.trainer == "device" else SHORT,
                    gate_share=args.gate_share, rounds_per_arrival=args.rounds_per_arrival,
                    local_epochs=args.local_epochs, sparsity=args.sparsity)
    results = compare(args.data, args.weights, args.threshold, args.clinics or CLINICS,
                      args.seed, args.cases_per_round, args.rounds,
                      args.modes or MODES, replay)
    for row in results:
        print(json.dumps(row), flush=True)
    for row in summary(results):
        print(json.dumps(row), flush=True)
    if args.json:
        _dump(results, args.json)
    return 0


def cmd_shifts(args: argparse.Namespace) -> int:
    from models.training.evaluate import shift_evaluation
    from models.training.shifts import format_report
    report = shift_evaluation(args.model, args.data, args.split)
    if args.json:
        _dump(report)
    else:
        print(f"bundle {args.model} on {args.split} files of {args.data}, via LiteRT, "
              f"at the bundle's threshold:")
        print(format_report(report))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from models.training.reproduce import print_table, reproduce_paper
    result = reproduce_paper(args.data, seed=args.seed, epochs=args.epochs)
    print_table(result)
    if args.json:
        _dump(result, args.json)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from models.training.bench import run_bench
    run_bench(args.data, seed=args.seed, epochs=args.epochs)
    return 0


def setting(text: str) -> tuple[str, str]:
    """NAME=VALUE."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def names(text: str) -> list[str]:
    """A comma-separated list of names."""
    return [n.strip() for n in text.split(",") if n.strip()]


def share(text: str) -> float:
    """A fraction in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"not a share from 0 to 1: {text!r}")
    return value


def modes(text: str) -> list[str]:
    """Comma-separated adaptation modes of :data:`models.core.adapt.MODES`."""
    chosen = names(text)
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}, not {text!r}")
    return chosen


def seed_range(text: str) -> list[int]:
    """``N`` or ``FIRST-LAST`` (inclusive)."""
    first, _, last = text.partition("-")
    try:
        seeds = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed or FIRST-LAST: {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"an empty range: {text!r}")
    return seeds


def data_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data", required=True, help="a MANIFEST.tsv (or the folder "
                    "holding it), a dataset folder (yes/, no/) or a CSV with "
                    "filename,labels")
    sp.add_argument("--sites", type=names, help="only these sites of the manifest "
                    "(comma-separated)")
    sp.add_argument("--exclude-sites", type=names, help="leave these sites out")


def train_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--epochs", type=positive_int,
                    help="epochs (default: the architecture's training recipe)")
    sp.add_argument("--set", type=setting, action="append", default=[],
                    metavar="NAME=VALUE", help="change one setting of the training "
                    "recipe (models.training.train.TrainConfig), e.g. noise=0.05")


def _training_commands(sub) -> None:
    """train, evaluate and cv."""
    sp = sub.add_parser("train", help="train, prune, int8-quantize and sign a bundle")
    data_arg(sp)
    train_args(sp)
    sp.add_argument("--arch", default="edge", help="architecture: edge (default) or paper")
    sp.add_argument("--out", required=True, help="bundle directory to write")
    sp.add_argument("--sign-key", required=True, help="Ed25519 private key file")
    sp.add_argument("--sparsity", type=sparsity,
                    help="pruning target (default: the architecture's; 0 = no pruning)")
    sp.add_argument("--float-out", help="also save the float Keras weights (.weights.h5) "
                    "for a coordinator to rebuild from")
    sp.add_argument("--loso", help="a 'loso --json' result whose per-site figures go into "
                    "the manifest")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="evaluate a bundle through LiteRT")
    data_arg(sp)
    sp.add_argument("--model", default=str(DEFAULT_BUNDLE), help="bundle directory")
    sp.add_argument("--split", choices=("all", "test"), default="all",
                    help="'test': only the files the bundle's manifest held out")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.add_argument("--plots", help="write roc.png, calibration.png, confusion.png here")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("cv", help="grouped k-fold cross-validation")
    data_arg(sp)
    train_args(sp)
    sp.add_argument("--arch", help="architecture: edge (default) or paper")
    sp.add_argument("--folds", type=at_least(2), default=5)
    sp.add_argument("--json", type=json_out, help="write the full result to this file")
    sp.add_argument("--shifts", action="store_true",
                    help="also test each fold model on its fold after acquisition shifts")
    sp.add_argument("--cv-site", help="cut only this site of a manifest into folds; the "
                    "other sites are always trained on")
    sp.add_argument("--jobs", type=positive_int, help="folds trained at once, each in "
                    "its own process, the cores shared among them (default: all folds; 1 = "
                    "in this process, one after another)")
    sp.set_defaults(func=cmd_cv)


def _site_commands(sub) -> None:
    """loso, adapt-modes and shifts: how the model does at other sites."""
    sp = sub.add_parser("loso", help="leave-one-site-out: train on all sites but one, "
                        "judge on the one left out")
    data_arg(sp)
    train_args(sp)
    sp.add_argument("--arch", help="architecture: edge (default) or paper")
    sp.add_argument("--holdout", type=names, help="sites to hold out in turn (default: "
                    "every site)")
    sp.add_argument("--json", type=json_out, help="write the full result to this file")
    sp.add_argument("--jobs", type=positive_int, help="held-out sites trained at once, "
                    "each in its own process (default 1)")
    sp.add_argument("--rescore", help="a saved --json result: judge its held-out "
                    "predictions at --threshold instead of training")
    sp.add_argument("--threshold", type=float, default=0.5,
                    help="the fixed threshold of --rescore (default 0.5)")
    sp.set_defaults(func=cmd_loso)

    sp = sub.add_parser("adapt-modes", help="which part of the model clinics should adapt "
                        "together: an in-process federation of real sites per mode")
    data_arg(sp)
    sp.add_argument("--weights", required=True, help="the initial model's float weights "
                    "(an edge model's .weights.h5)")
    sp.add_argument("--threshold", type=float, required=True,
                    help="the initial model's operating threshold")
    sp.add_argument("--clinics", type=names, default=None,
                    help="sites taking part (default: the four TCGA-LGG sites)")
    sp.add_argument("--seed", type=seed_range, default=[0],
                    help="a seed, or seeds FIRST-LAST (each its own split; default 0)")
    sp.add_argument("--modes", type=modes, help=f"of {', '.join(MODES)} (default: all)")
    sp.add_argument("--cases-per-round", type=positive_int, default=10,
                    help="confirmed cases per clinic at each arrival")
    sp.add_argument("--rounds", type=positive_int, default=6, help="arrivals")
    sp.add_argument("--trainer", choices=("short", "device"), default="short",
                    help="short: 60 epochs, patience 10; device: the appliances' "
                    "trainer, 200 epochs, patience 20 (their schedule: add "
                    "--local-epochs 20 --rounds-per-arrival 5)")
    sp.add_argument("--gate-share", type=share, default=0.0, help="share of each clinic's "
                    "cases held out for its local gate, never trained on (devices: 0.25)")
    sp.add_argument("--rounds-per-arrival", type=positive_int, default=1,
                    help="federated rounds between two arrivals (devices: 5)")
    sp.add_argument("--local-epochs", type=positive_int,
                    help="a federated round's epoch cap (default: the trainer's)")
    sp.add_argument("--sparsity", type=sparsity, default=0.0, help="prune this share of "
                    "the averaged head's hidden kernel each round, as a coordinator "
                    "with sparsity > 0 does at publication (default 0: none)")
    sp.add_argument("--json", type=json_out, help="write the results to this file")
    sp.set_defaults(func=cmd_adapt_modes)

    sp = sub.add_parser("shifts", help="a bundle's decisions under acquisition shifts "
                        "(other scanners, protocols, exports), via LiteRT")
    data_arg(sp)
    sp.add_argument("--model", default=str(DEFAULT_BUNDLE), help="bundle directory")
    sp.add_argument("--split", choices=("all", "test"), default="test",
                    help="'test' (default): only the files the bundle's manifest held out")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(func=cmd_shifts)


def _bundle_commands(sub) -> None:
    """keygen, sign, verify (:mod:`models.bundle_cli`), reproduce-paper and bench."""
    bundle_cli.add_commands(sub)
    sp = sub.add_parser("reproduce-paper", help="the seed paper's protocol, leakage-free")
    data_arg(sp)
    train_args(sp)
    sp.add_argument("--json", type=json_out, help="write the full result to this file")
    sp.set_defaults(func=cmd_reproduce)

    sp = sub.add_parser("bench", help="formats, sizes, accuracy and LiteRT latency")
    data_arg(sp)
    train_args(sp)
    sp.set_defaults(func=cmd_bench)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    _training_commands(sub)
    _site_commands(sub)
    _bundle_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "data", None):
        from models.training.dataset import DataSource
        args.data = DataSource(Path(args.data), tuple(args.sites or ()),
                               tuple(args.exclude_sites or ()))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
