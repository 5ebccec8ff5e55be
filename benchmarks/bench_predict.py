"""Whole-scan inference speed: preprocessing, network, and both together.

Trains the default (``auto``) model on 50 true labels of the demo scan as the app does,
then times, each ``--repeats`` times (the best run is reported):

* ``preprocess``: ``Preprocessor.iter_transformed`` over the whole scan alone;
* ``network``: ``TrainedModel.predict_proba`` on the preprocessed patterns alone;
* ``end to end``: :func:`polmap.learn.predict.predict_scan` (read, preprocess,
  classify, uncertainty maps), where the next chunk is prepared while the
  network classifies the current one.

Also the paper's network forward pass (256 x 256 input, untrained weights:
speed does not depend on them) on a sample, for the speed ratio.

Usage::

    .venv/bin/python benchmarks/bench_predict.py [--preset demo] [--repeats 3]

Figures depend on the machine's load: the script prints the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


# Issue 3's aim for whole-scan inference, here end to end (reading and preprocessing included).
TARGET_PATTERNS_PER_S = 3000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paper-sample", type=int, default=64, help="patterns for the paper network's forward pass")
    args = ap.parse_args(argv)

    import torch

    from polmap import simulate
    from polmap.io import open_dataset
    from polmap.learn.model import build_model, default_preprocess
    from polmap.learn.pipeline import train_on_dataset
    from polmap.learn.predict import predict_scan
    from polmap.process.preprocess import PreprocessConfig, Preprocessor
    from polmap.learn.train import TrainConfig

    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}")
    ds = open_dataset(simulate.demo_path(preset=args.preset))
    R, C = ds.scan_shape
    n = R * C
    truth = np.asarray(ds.ground_truth.label_map)
    names = list(ds.ground_truth.class_names)
    rng = np.random.default_rng(0)
    flat = rng.choice(n, 50, replace=False)
    pos = np.stack([flat // C, flat % C], 1)
    cfg = TrainConfig(seed=0)
    pre = Preprocessor(PreprocessConfig(**default_preprocess(cfg.model))).fit(ds)
    model = train_on_dataset(ds, pre, pos, truth[pos[:, 0], pos[:, 1]], names, cfg)
    print(f"scan {R} x {C} ({n} patterns), detector {ds.detector_shape}, {model.n_members} members, "
          f"input {model.input_size} px")

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    X = np.empty((n, *pre.output_shape), np.float32)

    def preprocess_all() -> None:
        for rows, x in pre.iter_transformed(ds):
            X[rows.start * C : rows.stop * C] = x

    t_pre = best(preprocess_all)
    t_net = best(lambda: model.predict_proba(X))
    t_e2e = best(lambda: predict_scan(model, ds, pre))
    acc = float((predict_scan(model, ds, pre).label_map == truth).mean())
    paper = build_model("paper", len(names), 256).eval()
    xs = torch.rand(args.paper_sample, 1, 256, 256)
    with torch.inference_mode():
        paper(xs[:2])
        t_paper = best(lambda: paper(xs))
    pps = lambda t, k=n: k / t  # noqa: E731
    print(f"preprocess alone : {pps(t_pre):8,.0f} patterns/s ({t_pre:.2f} s)")
    print(f"network alone    : {pps(t_net):8,.0f} patterns/s ({t_net:.2f} s)")
    print(f"serial sum       : {n / (t_pre + t_net):8,.0f} patterns/s")
    print(f"end to end       : {pps(t_e2e):8,.0f} patterns/s ({t_e2e:.2f} s), accuracy {acc:.1%}")
    print(f"paper network    : {pps(t_paper, args.paper_sample):8,.0f} patterns/s (forward only, 256 px)")
    print(f"speed ratio, network alone: {pps(t_net) / pps(t_paper, args.paper_sample):.0f} x")
    print(f"load average after: {os.getloadavg()}")
    if pps(t_e2e) < TARGET_PATTERNS_PER_S:
        print(f"MISSED end to end {pps(t_e2e):,.0f} patterns/s < {TARGET_PATTERNS_PER_S:,} (target)", file=sys.stderr)
        return 1
    print(f"target met: end to end >= {TARGET_PATTERNS_PER_S:,} patterns/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
