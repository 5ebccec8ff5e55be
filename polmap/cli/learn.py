"""Headless learning commands: ``train``, ``predict``, ``suggest``, ``export``, ``benchmark``.

Each is a thin layer over the same core the dashboard uses
(:mod:`polmap.process.preprocess`, :mod:`polmap.learn.train`, :mod:`polmap.learn.predict`,
:mod:`polmap.learn.sampling`, :mod:`polmap.viz.maps`, :mod:`polmap.evaluation.benchmark`).
Bad input raises ``ValueError``/``DatasetError``/``FileNotFoundError`` with one
clear sentence; :func:`polmap.cli.main` prints it without a traceback.

Examples::

    polmap train --data scan.h5 --labels labels.csv --out model.pt
    polmap predict --data scan.h5 --model model.pt --out pred.h5
    polmap export --pred pred.h5 --png map.png --csv map.csv
    polmap suggest --data scan.h5 --labels labels.csv --strategy adaptive --budget 10 --model model.pt
    polmap benchmark --data scan.h5 --truth scan.h5:/ground_truth/label_map --seeds 5 --out results.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np




# ---------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------
def _say(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


def _need_file(path: str | None, what: str) -> str:
    if path is None:
        raise ValueError(f"{what} is required")
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def _open_data(args: argparse.Namespace) -> Any:
    from polmap.io import open_dataset

    if args.data != "demo":
        _need_file(args.data, "data file")
    return open_dataset(args.data, dataset_path=args.dataset_path)


def _csv_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ValueError(f"expected a comma-separated list without empty entries, found {text!r}")
    return items


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def _csv_class_names(path: str) -> list[str]:
    """Class names of a label CSV in order of first appearance."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "class" not in header:
            raise ValueError(f"{path} line 1: header {header} lacks the column 'class' (expected row,col,class,...)")
        k = header.index("class")
        names: list[str] = []
        for row in reader:
            if len(row) > k and row[k].strip() and row[k].strip() not in names:
                names.append(row[k].strip())
    return names


def _load_labels(args: argparse.Namespace, ds: Any, *, required: bool = True) -> Any:
    """The LabelStore from ``--labels`` (CSV or workspace), classes from --classes / the data / the CSV."""
    from polmap.labels import ClassSet, LabelStore

    given = _csv_list(getattr(args, "classes", None))
    path = getattr(args, "labels", None)
    if path is None:
        if required:
            raise ValueError("no labels: give --labels labels.csv (row,col,class) or a workspace file")
        names = given or (ds.ground_truth.class_names if ds.ground_truth is not None else None)
        if not names:
            raise ValueError("without --labels, give the class names with --classes a,b,c")
        return LabelStore(ds.scan_shape, ClassSet.for_names(names))
    _need_file(path, "labels file")
    if _is_hdf5(path):
        from polmap.io.project import Workspace

        ws = Workspace.open(path, dataset=ds)  # WorkspaceMismatch when made for other data
        store = ws.labels
        if given is not None and list(given) != store.classes.names:
            raise ValueError(
                f"--classes {given} differ from the workspace's classes {store.classes.names}; "
                "leave --classes out to use the workspace's"
            )
        return store
    if given is not None:
        names = given
        colors = None
    elif ds.ground_truth is not None and ds.ground_truth.class_names:
        # The data file names its classes: labels must use them (a typo is an error, not a new class).
        names, colors = list(ds.ground_truth.class_names), ds.ground_truth.class_colors
        unknown = [n for n in _csv_class_names(path) if n not in names]
        if unknown:
            raise ValueError(
                f"{path}: unknown class {unknown[0]!r}; {args.data} has the classes {names} "
                "(give --classes a,b,c to label with other names)"
            )
    else:
        names, colors = _csv_class_names(path), None
    if not names:
        raise ValueError(f"no labels in {path}: it has no data rows; label some positions first")
    store = LabelStore(ds.scan_shape, ClassSet.for_names(names, colors if given is None else None))
    store.import_csv(path)  # ValueError naming the line of an unknown class or a bad position
    return store


def _read_json_arg(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (VALUE parsed as JSON when it can be) -> dict."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"{what} options look like KEY=VALUE, found {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


# ---------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="FILE", help="4D-STEM data file (or 'demo')")
    p.add_argument("--dataset", dest="dataset_path", default=None, metavar="PATH",
                   help="array inside a container file (HDF5 path, .npz key)")


def _train(args: argparse.Namespace) -> int:
    from polmap.learn.model import MODELS, default_preprocess
    from polmap.learn.pipeline import train_on_dataset
    from polmap.process.preprocess import PreprocessConfig, Preprocessor
    from polmap.learn.symmetry import parse_directions
    from polmap.learn.train import TrainConfig

    if args.model not in MODELS:
        raise ValueError(f"unknown model {args.model!r}; choose one of {sorted(MODELS)}")
    with _open_data(args) as ds:
        store = _load_labels(args, ds)
        pos, cls = store.positions_and_classes()
        if len(pos) == 0:
            raise ValueError(f"no labels in {args.labels}; label some positions first")
        present = np.unique(cls)
        if len(present) < 2:
            raise ValueError(
                f"all {len(cls)} labels are class {store.classes.names[int(present[0])]!r}; "
                "label at least two classes to train a classifier"
            )
        t0 = time.perf_counter()
        pre_cfg = dict(default_preprocess(args.model))
        pre_cfg.update(_read_json_arg(args.preprocess, "--preprocess"))
        pre = Preprocessor(PreprocessConfig(**pre_cfg)).fit(ds)
        prep_s = time.perf_counter() - t0
        directions = parse_directions(args.directions, store.classes.names)
        declared = getattr(ds.ground_truth, "class_directions", None) or {}
        if args.directions is None and declared:
            # the data file declares its classes' directions: a prior, checked in training like a user's
            directions = {k: v for k, v in declared.items() if k in store.classes.names}
            _say(args, f"class directions declared by {args.data}: {directions} (checked against the labels)")
        overrides = _read_json_arg(args.train, "--train")
        base = TrainConfig().to_dict()
        for k in ("epochs", "seed"):
            if getattr(args, k) is not None:
                overrides[k] = getattr(args, k)
        if args.members is not None:
            overrides["n_members"] = args.members
        unknown = sorted(set(overrides) - set(base))
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(base)}")
        cfg = TrainConfig.from_dict({**base, **overrides, "model": args.model})

        def progress(rec: dict[str, Any]) -> None:
            if not args.quiet and args.verbose:
                va = rec.get("val_acc")
                print(f"member {rec['member'] + 1}/{rec['n_members']} epoch {rec['epoch']}/{rec['epochs']} "
                      f"loss {rec['loss']:.3f}" + (f" val_acc {va:.3f}" if va is not None else ""), file=sys.stderr)

        t0 = time.perf_counter()
        tm = train_on_dataset(
            ds, pre, pos, cls, store.classes.names, cfg, directions=directions, class_colors=store.classes.colors,
            provenance={
                "dataset_fingerprint": ds.fingerprint, "dataset_source": ds.source,
                "dataset_path": ds.dataset_path, "label_hash": store.hash(),
                "labels_file": os.path.abspath(args.labels),
            },
            progress=progress, groups=store.groups(),
        )
        train_s = time.perf_counter() - t0
        tm.save(args.out)
    rep = tm.report
    oof = rep.get("oof_accuracy")
    counts = ", ".join(f"{k} {v}" for k, v in store.counts().items())
    _say(args, f"trained {tm.model_name} ({tm.n_members} member(s), {tm.n_parameters:,} parameters each) on "
               f"{len(cls)} labels ({counts}) in {train_s:.1f} s (+{prep_s:.1f} s preprocessing)")
    _say(args, "out-of-fold accuracy: " + (f"{100 * oof:.1f} %" if oof is not None else
                                            f"unknown ({rep.get('validation_note', 'no validation')})"))
    if rep.get("family_note"):
        _say(args, rep["family_note"])
    _say_symmetry(args, rep.get("symmetry") or {})
    for w in rep.get("warnings", []):
        _say(args, f"warning: {w}")
    verdict = rep.get("assessment") or {}
    if verdict.get("level") in ("warning", "failure"):
        _say(args, f"{'FAILURE' if verdict['level'] == 'failure' else 'warning'}: {verdict['headline']}")
        for c in verdict.get("causes", []):
            _say(args, f"  {verdict.get('causes_title', 'likely causes').rstrip('s')}: {c}")
    print(args.out)
    return 0


def _say_symmetry(args: argparse.Namespace, sym: dict[str, Any]) -> None:
    """The symmetry map found, and why operations were left out."""
    _say(args, f"symmetry: {sym.get('summary', 'none')}")
    for line in sym.get("mapping", []):
        _say(args, f"  {line}")
    by_reason: dict[str, list[str]] = {}
    for op, why in (sym.get("skipped") or {}).items():
        by_reason.setdefault(why, []).append(op)
    for why, ops in by_reason.items():
        _say(args, f"  not used ({', '.join(ops)}): {why}")


# ---------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------
def _load_model(path: str) -> Any:
    from polmap.learn.train import TrainedModel

    _need_file(path, "model file")
    return TrainedModel.load(path)


def _model_preprocessor(model: Any, ds: Any, refit: bool) -> tuple[Any, str]:
    """The model's preprocessing for this dataset: stored state, or refitted on ``ds``.

    Raises IncompatibleModelError (a ValueError) when model and dataset do not match.
    """
    from polmap.learn.predict import check_compatible
    from polmap.process.preprocess import Preprocessor

    st = model.preprocess_state
    if not st:
        raise ValueError("the model has no preprocessing recorded; retrain it with polmap train")
    check_compatible(model, ds)  # detector shape
    same = st.get("fingerprint") == ds.fingerprint
    pre = Preprocessor.from_state_dict(st)
    if same:
        note = "stored preprocessing"
    elif not refit:
        note = "stored preprocessing (fitted on another dataset)"
    else:
        # Another scan (e.g. the next time slice): same settings, beam centre and descan fitted anew.
        pre = Preprocessor(pre.config).fit(ds)
        note = "preprocessing refitted on this dataset (beam centre, descan)"
    check_compatible(model, ds, pre)
    return pre, note


def _predict(args: argparse.Namespace) -> int:
    from polmap import __version__
    from polmap.learn.predict import predict_scan
    from polmap.io.prediction_file import write_prediction_file

    model = _load_model(args.model)
    with _open_data(args) as ds:
        pre, note = _model_preprocessor(model, ds, refit=not args.keep_preprocessing)
        t0 = time.perf_counter()
        pred = predict_scan(model, ds, pre)
        dt = time.perf_counter() - t0
        n = ds.n_patterns
        prov = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "polmap_version": __version__,
            "dataset": {"source": ds.source, "dataset_path": ds.dataset_path, "name": ds.name,
                        "fingerprint": ds.fingerprint, "scan_shape": list(ds.scan_shape),
                        "detector_shape": list(ds.detector_shape)},
            "model": {"file": os.path.abspath(args.model), "name": model.model_name,
                      "config": model.model_config, "n_members": model.n_members,
                      "provenance": model.provenance,
                      "oof_accuracy": (model.report or {}).get("oof_accuracy")},
            "preprocess": pre.state_dict(),
            "preprocess_note": note,
            "seconds": dt,
        }
        write_prediction_file(args.out, pred.arrays(), model.class_names, model.class_colors, prov)
    _say(args, f"predicted {n} patterns in {dt:.1f} s ({n / max(dt, 1e-9):,.0f} patterns/s; {note})")
    _say(args, "class fractions: " + ", ".join(f"{c} {100 * f:.1f} %" for c, f in pred.class_fractions().items()))
    print(args.out)
    return 0


# ---------------------------------------------------------------------------------
# suggest
# ---------------------------------------------------------------------------------
def _suggest(args: argparse.Namespace) -> int:
    from polmap.learn.sampling import STRATEGIES, dataset_features, suggest_detailed

    if args.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {args.strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if args.budget < 0:
        raise ValueError(f"--budget must be >= 0, found {args.budget}")
    model = _load_model(args.model) if args.model else None
    with _open_data(args) as ds:
        store = _load_labels(args, ds, required=False)
        pos, cls = store.positions_and_classes()
        kwargs: dict[str, Any] = {"seed": args.seed}
        kwargs.update(_read_json_arg(args.param, "--param"))
        if args.exclude:
            _need_file(args.exclude, "exclude file")
            ex = np.loadtxt(args.exclude, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.int64, ndmin=2)
            kwargs["exclude"] = ex
        if model is not None:
            from polmap.learn.predict import check_compatible, predict_scan

            check_compatible(model, ds, class_names=store.classes.names)
            if args.strategy in ("adaptive",):
                pre, _ = _model_preprocessor(model, ds, refit=True)
                kwargs["probabilities"] = predict_scan(model, ds, pre).probabilities
        if args.strategy in ("adaptive", "cold_start") and "probabilities" not in kwargs:
            kwargs["features"] = dataset_features(ds)
        res = suggest_detailed(args.strategy, ds.scan_shape, pos, cls, int(args.budget), **kwargs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "col", "score", "reason"])
    for (r, c), s, why in zip(res.positions, res.scores, res.reasons):
        w.writerow([int(r), int(c), f"{float(s):.4g}", why])
    text = buf.getvalue()
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        _say(args, f"{len(res.positions)} positions ({res.strategy}: {res.message}) written to {args.out}")
    else:
        sys.stdout.write(text)
        _say(args, f"{len(res.positions)} positions ({res.strategy}: {res.message})")
    return 0


# ---------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------
def _export(args: argparse.Namespace) -> int:
    from polmap.io.prediction_file import read_prediction_file
    from polmap.labels import ClassSet
    from polmap.viz.maps import export_png, rgb_map

    if not (args.png or args.csv or args.uncertainty_png):
        raise ValueError("nothing to export: give --png FILE and/or --csv FILE (or --uncertainty-png FILE)")
    arrays, attrs = read_prediction_file(args.pred)
    names, colors = attrs["class_names"], attrs["class_colors"]
    probs = arrays["probabilities"]
    written = []
    if args.png:
        if args.mode == "paper" and probs.shape[-1] != 3:
            raise ValueError(f"--mode paper needs exactly 3 classes (na, vertical, horizontal); this prediction has {names}")
        rgb = rgb_map(probs, colors or ClassSet.for_names(names).colors, mode=args.mode, fade=args.fade)
        export_png(rgb, args.png, scale=args.scale, metadata={"polmap": json.dumps(attrs["provenance"])[:60000],
                                                              "classes": json.dumps(names)})
        written.append(args.png)
    if args.uncertainty_png:
        u = arrays.get("entropy")
        if u is None:
            raise ValueError(f"{args.pred} holds no entropy map")
        # Stored already divided by log K (predict.py): 0 certain, 1 uniform.
        u = np.clip(np.nan_to_num(u, nan=1.0), 0, 1)
        export_png(u.astype(np.float64), args.uncertainty_png, scale=args.scale)
        written.append(args.uncertainty_png)
    if args.csv:
        lm = arrays["label_map"]
        R, C = lm.shape
        extra = [k for k in ("entropy", "margin", "disagreement") if k in arrays]
        with open(args.csv, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["row", "col", "class"] + [f"p_{n}" for n in names] + extra)
            p2 = probs.reshape(R * C, -1)
            for i in range(R * C):
                r, c = divmod(i, C)
                k = int(lm[r, c])
                w.writerow([r, c, names[k] if k >= 0 else ""] + [f"{v:.4f}" for v in p2[i]]
                           + [f"{float(arrays[e][r, c]):.4f}" for e in extra])
        written.append(args.csv)
    _say(args, "wrote " + ", ".join(written))
    return 0


# ---------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------
def _command_line(args: argparse.Namespace) -> str:
    """The benchmark command as it could be typed again (defaults included)."""
    parts = ["polmap", "benchmark", "--data", args.data]
    if args.dataset_path:
        parts += ["--dataset", args.dataset_path]
    if args.truth:
        parts += ["--truth", args.truth]
    if args.classes:
        parts += ["--classes", args.classes]
    parts += ["--budgets", ",".join(map(str, args.budgets)), "--strategies", args.strategies]
    parts += ["--seed-list", ",".join(map(str, args.seed_list))] if args.seed_list else ["--seeds", str(args.seeds)]
    parts += ["--model", args.model, "--round-size", str(args.round_size)]
    if args.initial_size:
        parts += ["--initial-size", str(args.initial_size)]
    if args.wall_distance != 2.0:
        parts += ["--wall-distance", str(args.wall_distance)]
    if args.cold_start_features != "patterns":
        parts += ["--cold-start-features", args.cold_start_features]
    for t in args.train or []:
        parts += ["--train", t]
    for t in args.paper_train or []:
        parts += ["--paper-train", t]
    if args.paper_budget != 50:
        parts += ["--paper-budget", str(args.paper_budget)]
    if args.paper_strategy != "adaptive":
        parts += ["--paper-strategy", args.paper_strategy]
    if args.paper_preprocess != "paper":
        parts += ["--paper-preprocess", args.paper_preprocess]
    for flag in ("no_paper", "no_baselines", "no_plot", "ignore_declared"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    parts += ["--out", args.out]
    return " ".join(parts)


def _benchmark(args: argparse.Namespace) -> int:
    from polmap.evaluation.benchmark import BenchmarkConfig, run_benchmark, write_results
    from polmap.io import read_ground_truth

    with _open_data(args) as ds:
        if args.truth:
            truth = read_ground_truth(args.truth)  # FILE.h5:/path, FILE.h5:/group, FILE.npy, FILE.npz[:key]
        elif ds.ground_truth is not None:
            truth = ds.ground_truth
        else:
            raise ValueError(f"{args.data} holds no ground truth; give it with --truth FILE[:DATASET] (.h5 or .npy)")
        names = _csv_list(args.classes)
        seeds = list(range(args.seeds)) if len(args.seed_list or []) == 0 else list(args.seed_list)
        cfg = BenchmarkConfig(
            budgets=args.budgets,
            strategies=_csv_list(args.strategies) or [],
            seeds=seeds,
            model=args.model,
            round_size=args.round_size,
            initial_size=args.initial_size,
            wall_distance=args.wall_distance,
            train=_read_json_arg(args.train, "--train"),
            cold_start_features=args.cold_start_features,
            pca_knn=not args.no_baselines,
            conventional=not args.no_baselines,
            paper_budget=None if (args.no_paper or args.no_baselines) else args.paper_budget,
            paper_strategy=args.paper_strategy,
            paper_train=_read_json_arg(args.paper_train, "--paper-train"),
            paper_preprocess=args.paper_preprocess,
            end_to_end_speed=not args.no_baselines,
            declared_directions=not args.ignore_declared,
        )
        command = _command_line(args)
        results = run_benchmark(
            ds, truth, cfg, class_names=names, command=command,
            progress=None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)),
        )
    paths = write_results(results, args.out, plot=not args.no_plot)
    _say(args, f"benchmark finished in {results['elapsed_s']:.0f} s")
    if not args.quiet:
        print(open(paths["markdown"], encoding="utf-8").read())
    print("\n".join(paths.values()))
    return 0


# ---------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """Add ``train``, ``predict``, ``suggest``, ``export`` and ``benchmark``."""
    from polmap.learn.sampling import STRATEGIES  # numpy/scipy only: registering must not import torch

    strategies = list(STRATEGIES)

    p = subparsers.add_parser(
        "train", help="train a network on labelled positions",
        description="Train a network (a cross-validation ensemble) on the labelled positions of a scan and save "
                    "a checkpoint holding weights, classes, preprocessing and provenance.",
    )
    _add_data_args(p)
    p.add_argument("--labels", required=True, metavar="FILE",
                   help="labels: CSV with columns row,col,class (from the dashboard or polmap) or a workspace file")
    p.add_argument("--classes", default=None, metavar="A,B,C",
                   help="class names in order (default: the data's ground-truth classes, else the CSV's in order of appearance)")
    p.add_argument("--model", default="auto",
                   help="auto (default: compact networks and linear discriminants, the better kept), compact, linear or paper")
    p.add_argument("--directions", default=None, metavar="CLASS=ANGLE,...",
                   help="declared class directions on the detector (degrees from +column towards +row, or "
                        "'invariant'), e.g. 'up=270,down=90,c=invariant': a prior that the data must confirm "
                        "(default: the directions the data file declares, if any; '' for none)")
    p.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write (e.g. model.pt)")
    p.add_argument("--epochs", type=int, default=None, help="most epochs per member")
    p.add_argument("--members", type=int, default=None, help="ensemble size / cross-validation folds")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same model on CPU)")
    p.add_argument("--train", action="append", metavar="KEY=VALUE", help="any TrainConfig field, e.g. lr=0.002 (repeatable)")
    p.add_argument("--preprocess", action="append", metavar="KEY=VALUE",
                   help="override a PreprocessConfig field of the model's default, e.g. output_size=64 (repeatable)")
    p.add_argument("--verbose", action="store_true", help="print every epoch")
    p.add_argument("--quiet", action="store_true", help="print only the output path")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "predict", help="predict the whole scan with a trained model",
        description="Classify every pattern of a scan: writes an HDF5 file with probabilities (R, C, K), "
                    "label_map, entropy, margin, ensemble disagreement, class names and provenance.",
    )
    _add_data_args(p)
    p.add_argument("--model", required=True, metavar="FILE", help="checkpoint from polmap train")
    p.add_argument("--out", required=True, metavar="FILE", help="prediction file to write (e.g. pred.h5)")
    p.add_argument("--keep-preprocessing", action="store_true",
                   help="on data other than the training data, reuse the stored beam centre/descan fit instead of refitting")
    p.add_argument("--quiet", action="store_true", help="print only the output path")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "suggest", help="positions to label next",
        description="Propose the next positions to label (CSV row,col,score,reason on stdout or --out). "
                    "Strategies: " + "; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()) + ".",
    )
    _add_data_args(p)
    p.add_argument("--labels", default=None, metavar="FILE", help="current labels (CSV or workspace); none: start from scratch")
    p.add_argument("--classes", default=None, metavar="A,B,C", help="class names (as for train)")
    p.add_argument("--strategy", default="adaptive", choices=strategies, help="strategy (default: adaptive)")
    p.add_argument("--budget", type=int, default=10, help="how many positions (default: 10)")
    p.add_argument("--model", default=None, metavar="FILE", help="checkpoint whose probabilities drive 'adaptive'")
    p.add_argument("--exclude", default=None, metavar="FILE", help="CSV (row,col,...) of positions never to propose")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="strategy parameter, e.g. step=15 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="FILE", help="write the CSV here instead of stdout")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_suggest)

    p = subparsers.add_parser(
        "export", help="export a prediction as PNG map and/or CSV",
        description="Turn a prediction file into an RGB map (each class its colour, blended by probability; "
                    "--mode paper for the paper's R/G/B) and/or a CSV of every position.",
    )
    p.add_argument("--pred", required=True, metavar="FILE", help="prediction file from polmap predict")
    p.add_argument("--png", default=None, metavar="FILE", help="RGB map to write")
    p.add_argument("--csv", default=None, metavar="FILE", help="CSV: row,col,class,p_<class>...,entropy,margin")
    p.add_argument("--uncertainty-png", default=None, metavar="FILE", help="grey-scale normalised entropy map")
    p.add_argument("--mode", default="blend", choices=["blend", "paper"], help="colour mode (default: blend)")
    p.add_argument("--fade", type=float, default=0.0, help="fade uncertain positions to white, 0..1 (default 0)")
    p.add_argument("--scale", type=int, default=4, help="pixels per scan position in the PNG (default 4)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "benchmark", help="label-efficiency benchmark against a ground-truth map",
        description="An oracle answers the true class of every position a strategy asks for; label, train, "
                    "predict and suggest repeat up to each budget. Reports whole-scan accuracy, accuracy near "
                    "walls, macro-F1, train and inference time (mean and std over seeds), the conventional "
                    "COM/Friedel and PCA-kNN baselines and the paper's network. Writes JSON, Markdown and PNG.",
    )
    _add_data_args(p)
    p.add_argument("--truth", default=None, metavar="FILE[:DATASET]",
                   help="ground truth: FILE.h5:/path/label_map, FILE.h5:/group, FILE.npy (default: the data file's own)")
    p.add_argument("--classes", default=None, metavar="A,B,C", help="class names of the truth's indices (default: its attribute)")
    p.add_argument("--budgets", type=_int_list, default=[10, 20, 30, 50, 100], metavar="N,N,...",
                   help="label counts to score at (default 10,20,30,50,100)")
    p.add_argument("--strategies", default="random,bisection,adaptive", metavar="S,S,...",
                   help=f"strategies (default random,bisection,adaptive; known: {','.join(strategies)})")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds 0..N-1 (default 5)")
    p.add_argument("--seed-list", type=_int_list, default=None, metavar="S,S,...", help="explicit seeds instead of --seeds")
    p.add_argument("--model", default="auto",
                   help="model under test: auto (default), compact, linear or paper")
    p.add_argument("--round-size", type=int, default=10, help="labels per round between trainings (default 10)")
    p.add_argument("--initial-size", type=int, default=None, help="size of the cold-start batch (default: round size)")
    p.add_argument("--wall-distance", type=float, default=2.0, help="'near wall' distance in px (default 2)")
    p.add_argument("--cold-start-features", default="patterns", choices=["patterns", "virtual"],
                   help="features for the model-free first round of adaptive: pooled patterns and their Friedel-"
                        "antisymmetric parts (default) or virtual images (BF, ADF, COM)")
    p.add_argument("--train", action="append", metavar="KEY=VALUE", help="TrainConfig override for the network (repeatable)")
    p.add_argument("--paper-budget", type=int, default=50, help="budget at which the paper's network is trained (default 50)")
    p.add_argument("--paper-strategy", default="adaptive", help="whose labels the paper's network gets (default adaptive)")
    p.add_argument("--paper-train", action="append", metavar="KEY=VALUE", help="TrainConfig override for the paper network")
    p.add_argument("--paper-preprocess", default="paper", choices=["paper", "compact"],
                   help="the paper network's preprocessing: as published (default; 256 px, linear min-max) or "
                        "polmap's (48 px, centred, sqrt), to tell the network from its preprocessing")
    p.add_argument("--no-paper", action="store_true", help="skip the paper's network")
    p.add_argument("--no-baselines", action="store_true", help="skip all baselines and the end-to-end timing")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--ignore-declared", action="store_true",
                   help="do not give training the class directions the data file declares: the symmetry comes "
                        "from the labelled data alone")
    p.add_argument("--out", default="benchmark.json", metavar="FILE",
                   help="results JSON; .md and .png are written next to it (default benchmark.json)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_benchmark)
