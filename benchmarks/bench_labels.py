"""Label-efficiency benchmark on the simulated demo presets.

Runs :func:`polmap.evaluation.benchmark.run_benchmark` (random, bisection and polmap
adaptive sampling; the conventional COM/Friedel map, PCA + kNN and the paper's
network as baselines) on each preset and writes, per preset,
``benchmarks/results/labels_<preset>.{json,md,png}``, plus
``benchmarks/results/labels_summary.md`` that checks the targets of issue 3:

* default model + adaptive sampling: >= 98 % whole-scan accuracy at 50
  labels and >= 95 % at 20 (mean over seeds), better than random at 20 and
  50 labels (whole scan and near walls);
* far better than the conventional centre-of-mass / Friedel map;
* training on 50 labels <= 15 s, inference >= 3,000 patterns/s, and the
  speed ratio against the paper's network measured in the same run.

Usage::

    python benchmarks/bench_labels.py                       # demo + paper_axis, 5 seeds
    python benchmarks/bench_labels.py --presets demo --seeds 2 --budgets 10,20,50
    python benchmarks/bench_labels.py --quick               # tiny preset, 1 seed: a smoke test

Timings depend on what else runs on the machine: the summary records the load
average before and after each preset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

TARGETS = {
    "acc50": 0.98,
    "acc20": 0.95,
    "train50_s": 15.0,
    "patterns_per_s": 3000.0,
}


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _get(st: dict, budget: int, key: str) -> float | None:
    row = st.get("budgets", {}).get(str(budget), {})
    v = row.get(key)
    return None if v is None else v.get("mean")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def summarise(all_results: dict[str, dict], commands: dict[str, str]) -> tuple[str, list[str]]:
    """The target check as Markdown, and the checks missed (``"preset: check"``)."""
    lines = ["# Label-efficiency targets (issue 3)", ""]
    missed: list[str] = []
    for preset, res in all_results.items():
        strat = res["strategies"]
        ad, rnd = strat.get("adaptive", {}), strat.get("random", {})
        seeds = res["config"]["seeds"]
        lines += [f"## `{preset}` ({res['dataset']['scan_shape'][0]} x {res['dataset']['scan_shape'][1]}, "
                  f"classes {res['dataset']['class_names']}, {len(seeds)} seeds)", ""]
        lines += ["| check | target | measured | met |", "|---|---|---|---|"]

        def row(name: str, target: str, measured: str, ok: bool | None) -> None:
            if ok is False:
                missed.append(f"{preset}: {name} ({measured}, target {target})")
            lines.append(f"| {name} | {target} | {measured} | {'yes' if ok else ('no' if ok is not None else '–')} |")

        for b, t in ((50, TARGETS["acc50"]), (20, TARGETS["acc20"])):
            v = _get(ad, b, "accuracy")
            row(f"adaptive, {b} labels, whole scan", f">= {100 * t:.0f} %", _pct(v), None if v is None else v >= t)
        for b in (20, 50):
            for key, what in (("accuracy", "whole scan"), ("accuracy_wall", "near walls")):
                a, r = _get(ad, b, key), _get(rnd, b, key)
                meas = f"{_pct(a)} vs {_pct(r)}" if a is not None and r is not None else "–"
                row(f"adaptive beats random, {b} labels, {what}", "adaptive > random", meas,
                    None if a is None or r is None else a > r)
        conv = res.get("baselines", {}).get("conventional", {})
        a50 = _get(ad, 50, "accuracy")
        if "accuracy" in conv and a50 is not None:
            row("beats conventional COM/Friedel (oracle-calibrated) by a wide margin", "> 10 points",
                f"{_pct(a50)} vs {_pct(conv['accuracy'])} (near walls {_pct(_get(ad, 50, 'accuracy_wall'))} vs "
                f"{_pct(conv.get('accuracy_wall'))})", a50 - conv["accuracy"] > 0.10)
        sp = res.get("speed", {})
        model = res["config"]["model"]
        t50 = sp.get(f"{model}_train_s_at_50_labels")
        where = "mean over strategies and seeds"
        if t50 is None:  # no paper run: the adaptive runs' own trainings at 50 labels
            t50, where = _get(ad, 50, "train_s"), "adaptive, mean over seeds"
        row("training on 50 labels", f"<= {TARGETS['train50_s']:.0f} s",
            "–" if t50 is None else f"{t50:.1f} s ({where})",
            None if t50 is None else t50 <= TARGETS["train50_s"])
        pps = sp.get(f"{model}_patterns_per_s")
        row("inference, network on preprocessed patterns", f">= {TARGETS['patterns_per_s']:,.0f} patterns/s",
            "–" if pps is None else f"{pps:,.0f} patterns/s", None if pps is None else pps >= TARGETS["patterns_per_s"])
        e2e = sp.get(f"{model}_end_to_end_patterns_per_s")
        if e2e is not None:
            row("inference incl. reading + preprocessing (predict_scan)", "(reported)", f"{e2e:,.0f} patterns/s", None)
        if "inference_speed_ratio_vs_paper" in sp:
            row("inference speed vs paper network (same run)", "(reported)",
                f"{sp['inference_speed_ratio_vs_paper']:.1f} x ({pps:,.0f} vs {sp['paper_patterns_per_s']:,.0f} patterns/s)", None)
        if "train_speed_ratio_vs_paper" in sp:
            row("training speed vs paper network at 50 labels", "(reported)",
                f"{sp['train_speed_ratio_vs_paper']:.1f} x ({t50:.1f} s vs {sp['paper_train_s']:.1f} s)", None)
        pb = res.get("baselines", {}).get("paper", {})
        paper = pb.get("summary")
        if paper:
            pt = pb.get("train", {})
            row(f"paper network, {pb['budget']} {pb['strategy']} labels, {pb.get('preprocess_name', 'paper')} "
                f"preprocessing, {pt.get('epochs')} x {pt.get('samples_per_epoch')} presentations", "(reported)",
                f"{_pct(paper['accuracy']['mean'])} (near walls {_pct(paper['accuracy_wall']['mean'])})", None)
        env = res.get("environment", {})
        lines += ["", f"Command: `{commands.get(preset, '')}`  ", f"Runtime {res['elapsed_s']:.0f} s; load average "
                  f"at start {env.get('load_avg_at_start')}, at end {res.get('load_avg_at_end')} "
                  f"(2-core machine shared with other jobs: timings are upper bounds).", ""]
    return "\n".join(lines) + "\n", missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="demo,paper_axis", help="simulation presets (default demo,paper_axis)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budgets", default="10,20,30,50,100")
    ap.add_argument("--strategies", default="random,bisection,adaptive")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--no-paper", action="store_true")
    ap.add_argument("--paper-preprocess", default="paper", choices=["paper", "compact"],
                    help="the paper network's preprocessing: as published (256 px) or polmap's (48 px)")
    ap.add_argument("--paper-epochs", type=int, default=None, help="epochs of the paper network (default PAPER_TRAIN's)")
    ap.add_argument("--quick", action="store_true", help="tiny preset, 1 seed, budgets 10,20: a smoke test")
    args = ap.parse_args(argv)

    from polmap.evaluation.benchmark import BenchmarkConfig, run_benchmark, write_results
    from polmap.io import open_dataset
    from polmap.simulate import demo_path

    presets = ["tiny"] if args.quick else [p.strip() for p in args.presets.split(",") if p.strip()]
    seeds = 1 if args.quick else args.seeds
    budgets = [10, 20] if args.quick else [int(b) for b in args.budgets.split(",")]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_results: dict[str, dict] = {}
    commands: dict[str, str] = {}
    for preset in presets:
        path = demo_path(preset=preset)
        paper_budget = None if args.no_paper or 50 not in budgets else 50
        paper_train = {} if args.paper_epochs is None else {"epochs": args.paper_epochs}
        cfg = BenchmarkConfig(budgets=budgets, strategies=args.strategies.split(","), seeds=list(range(seeds)),
                              paper_budget=paper_budget, paper_preprocess=args.paper_preprocess, paper_train=paper_train)
        cmd = (f"python benchmarks/bench_labels.py --presets {preset} --seeds {seeds} --budgets "
               f"{','.join(map(str, budgets))} --strategies {args.strategies}" + (" --no-paper" if paper_budget is None else "")
               + (f" --paper-preprocess {args.paper_preprocess}" if paper_budget and args.paper_preprocess != "paper" else "")
               + (f" --paper-epochs {args.paper_epochs}" if paper_budget and args.paper_epochs else ""))
        # The same run through the CLI: polmap benchmark --data <demo_path(preset)> ...
        commands[preset] = cmd
        print(f"== {preset}: {path}", flush=True)
        t0 = time.perf_counter()
        with open_dataset(path) as ds:
            res = run_benchmark(ds, ds.ground_truth, cfg, command=cmd, progress=lambda m: print(m, flush=True))
        res["load_avg_at_end"] = _load()
        res["dataset"]["preset"] = preset
        paths = write_results(res, out_dir / f"labels_{preset}.json")
        all_results[preset] = res
        print(f"   {time.perf_counter() - t0:.0f} s -> {', '.join(paths.values())}", flush=True)
    if not args.quick:
        # Summarise every preset with results in out_dir (presets may be run one at a time).
        for f in sorted(out_dir.glob("labels_*.json")):
            preset = f.stem[len("labels_"):]
            if preset not in all_results and preset != "tiny":
                res = json.loads(f.read_text(encoding="utf-8"))
                all_results[preset] = res
                commands[preset] = res.get("command", "")
    summary, missed = summarise(all_results, commands)
    name = "labels_summary_quick.md" if args.quick else "labels_summary.md"
    (out_dir / name).write_text(summary, encoding="utf-8")
    print(summary)
    for m in missed:
        print(f"MISSED {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
