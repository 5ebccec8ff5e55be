"""Why the paper's network learns nothing here: its preprocessing, step by step.

Trains the paper's ThreeLayerCnn (AdamW, lr 4e-4, weight decay 2e-3, batch 16,
constant learning rate, no augmentation: the published optimiser) on the same
50 random true labels under preprocessing variants that change one thing at a
time from the published one (5 x 5 boxing, linear min-max, no centring), and
reports the accuracy on its own training labels and on held-out positions.

A network that cannot fit 50 training labels has an input problem, not a
generalisation problem: this separates the two. An experiment with no target:
it exits 0 when it has run, non-zero only on an error.

Usage::

    .venv/bin/python benchmarks/bench_paper_preprocessing.py [--preset demo] [--seeds 3] [--steps 400]
    .venv/bin/python benchmarks/bench_paper_preprocessing.py --size 256 --seeds 1   # the published input size (slow)

Writes ``benchmarks/results/paper_preprocessing_<preset>.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def variants(size: int) -> dict[str, dict]:
    """Preprocessing variants, each one change away from the published one."""
    from polmap.learn.model import default_preprocess

    paper = dict(default_preprocess("paper"), output_size=size)
    return {
        "as published (linear min-max)": paper,
        "+ sqrt intensity scale": dict(paper, scaling="sqrt"),
        "+ bright-disk centring": dict(paper, centring="disk"),
        "polmap compact (centred, sqrt, max, no boxing)": dict(default_preprocess("compact"), output_size=size),
    }


def fit_once(X, y, Xt, yt, n_classes: int, size: int, steps: int, seed: int) -> tuple[float, float, float]:
    """Train the paper network for ``steps`` batches; (train accuracy, test accuracy, seconds)."""
    import torch
    import torch.nn.functional as F

    from polmap.learn.model import build_model

    torch.manual_seed(seed)
    net = build_model("paper", n_classes=n_classes, input_size=size)
    opt = torch.optim.AdamW(net.parameters(), lr=4e-4, weight_decay=2e-3)
    x, yy = torch.from_numpy(X).float()[:, None], torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (16,), generator=g)
        loss = F.cross_entropy(net(x[idx]), yy[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        tr = float((net(x).argmax(1) == yy).float().mean())
        pt = torch.cat([net(torch.from_numpy(Xt[s : s + 256]).float()[:, None]).argmax(1) for s in range(0, len(Xt), 256)])
    return tr, float((pt.numpy() == yt).mean()), dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400, help="batches of 16 (default 400: 6,400 presentations)")
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--test", type=int, default=1500, help="held-out positions scored")
    ap.add_argument("--size", type=int, default=48, help="input side (the paper: 256)")
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)

    from polmap.io import open_dataset
    from polmap.process.preprocess import PreprocessConfig, Preprocessor
    from polmap.simulate import demo_path

    path = demo_path(preset=args.preset)
    rows = []
    with open_dataset(path) as ds:
        truth = ds.ground_truth.label_map
        K = len(ds.ground_truth.class_names)
        R, C = truth.shape
        for name, pc in variants(args.size).items():
            pre = Preprocessor(PreprocessConfig(**pc)).fit(ds)
            res = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                flat = rng.choice(R * C, args.labels + args.test, replace=False)
                pos = np.stack([flat // C, flat % C], 1)
                X = pre.transform_positions(ds, pos)
                y = truth.ravel()[flat]
                res.append(fit_once(X[: args.labels], y[: args.labels], X[args.labels:], y[args.labels:], K,
                                    args.size, args.steps, seed))
                print(f"{name}, seed {seed}: train {res[-1][0]:.2f}, test {res[-1][1]:.3f}, {res[-1][2]:.0f} s", flush=True)
            a = np.array(res)
            rows.append((name, float(np.mean(X)), a[:, 0].mean(), a[:, 0].std(), a[:, 1].mean(), a[:, 1].std(), a[:, 2].mean()))
    lines = [
        f"# The paper's network under preprocessing variants ({args.preset})", "",
        f"ThreeLayerCnn at {args.size} px, AdamW lr 4e-4, weight decay 2e-3, batch 16, {args.steps} steps "
        f"({16 * args.steps:,} presentations), no augmentation; {args.labels} random true labels; accuracy on "
        f"{args.test:,} other positions; mean ± std over {args.seeds} seeds.", "",
        "| preprocessing | mean input | accuracy on its training labels | accuracy on held-out positions | train s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, mean_in, tr, trs, te, tes, dt in rows:
        lines.append(f"| {name} | {mean_in:.3f} | {100 * tr:.0f} ± {100 * trs:.0f} % | {100 * te:.1f} ± {100 * tes:.1f} % | {dt:.0f} |")
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    cmd = (f"python benchmarks/bench_paper_preprocessing.py --preset {args.preset} --seeds {args.seeds} "
           f"--steps {args.steps} --size {args.size}")
    lines += ["", f"Command: `{cmd}`; load average at end {load}.", ""]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"paper_preprocessing_{args.preset}.md"
    f.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"-> {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
