"""``polmap train / predict / suggest / export / benchmark`` on tiny simulated data.

Every error path must give exit code 2 and one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from polmap.cli import main

FAST = ["--train", "epochs=2", "--members", "2", "--train", "samples_per_epoch=32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny preset on disk, its truth, and a labels CSV of 30 true labels."""
    from polmap.simulate import demo_path

    d = tmp_path_factory.mktemp("cli")
    path = demo_path(d / "cache", preset="tiny")
    with h5py.File(path, "r") as f:
        lm = f["ground_truth/label_map"][()].astype(int)
        names = json.loads(f["ground_truth/label_map"].attrs["class_names"])
    R, C = lm.shape
    rng = np.random.default_rng(0)
    idx = rng.choice(R * C, 30, replace=False)
    labels = d / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "col", "class"])
        for i in idx:
            w.writerow([i // C, i % C, names[lm[i // C, i % C]]])
    return {"data": str(path), "truth": lm, "names": names, "labels": str(labels), "dir": d}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def expect_error(args: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    rc, out, err = run(args, capsys)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    line = err.strip()
    assert line.count("\n") == 0, err  # one line
    assert line.startswith(f"polmap {args[0]}: error: "), err
    for frag in fragments:
        assert frag in line, (frag, line)
    return line


def write_csv(path: Path, rows: list[tuple]) -> str:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "col", "class"])
        w.writerows(rows)
    return str(path)


# ---------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["train", "predict", "suggest", "export", "benchmark"])
def test_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: polmap {cmd}")
    assert "--data" in out or "--pred" in out


def test_registering_commands_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from polmap.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------
# the happy path: train -> predict -> export, suggest
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny: dict) -> dict:
    model = tiny["dir"] / "model.pt"
    rc = main(["train", "--data", tiny["data"], "--labels", tiny["labels"], "--out", str(model), "--seed", "1", *FAST])
    assert rc == 0
    pred = tiny["dir"] / "pred.h5"
    assert main(["predict", "--data", tiny["data"], "--model", str(model), "--out", str(pred), "--quiet"]) == 0
    return {**tiny, "model": str(model), "pred": str(pred)}


def test_train_writes_a_loadable_checkpoint(trained: dict) -> None:
    from polmap.learn.train import TrainedModel

    m = TrainedModel.load(trained["model"])
    assert m.class_names == trained["names"]
    assert m.n_members == 2
    assert m.provenance["n_labels"] == 30
    assert m.provenance["label_hash"] and m.provenance["dataset_fingerprint"]
    assert m.preprocess_state["config"]["output_size"] == m.input_size


def test_predict_file(trained: dict) -> None:
    R, C = trained["truth"].shape
    K = len(trained["names"])
    with h5py.File(trained["pred"], "r") as f:
        assert f.attrs["polmap_format"] == "polmap-prediction"
        p = f["probabilities"][()]
        assert p.shape == (R, C, K)
        assert np.allclose(p.sum(-1), 1, atol=1e-4)
        lm = f["label_map"][()]
        assert lm.shape == (R, C) and (lm == p.argmax(-1)).all()
        for k in ("entropy", "margin", "disagreement"):
            assert f[k].shape == (R, C)
        assert json.loads(f.attrs["class_names"]) == trained["names"]
        prov = json.loads(f.attrs["provenance"])
    assert prov["model"]["name"] == "auto"
    assert prov["dataset"]["scan_shape"] == [R, C]
    assert prov["preprocess"]["format"] == "polmap-preprocess"
    assert prov["preprocess_note"] == "stored preprocessing"


def test_export_png_and_csv(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, csv_path, upng = tmp_path / "map.png", tmp_path / "map.csv", tmp_path / "u.png"
    rc, _, err = run(["export", "--pred", trained["pred"], "--png", str(png), "--csv", str(csv_path),
                      "--uncertainty-png", str(upng), "--scale", "2"], capsys)
    assert rc == 0, err
    from PIL import Image

    R, C = trained["truth"].shape
    with Image.open(png) as im:
        assert im.size == (2 * C, 2 * R)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == R * C
    assert set(rows[0]) >= {"row", "col", "class", "entropy", "margin"} | {f"p_{n}" for n in trained["names"]}
    assert all(r["class"] in trained["names"] for r in rows)
    from polmap.viz.maps import rgb_map

    with h5py.File(trained["pred"], "r") as f:
        ent, probs = f["entropy"][()], f["probabilities"][()]
        colors = json.loads(f.attrs["class_colors"])
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))[::2, ::2].astype(int)
    # the PNG is the blend of the stored probabilities, pixel for pixel
    want = np.asarray(rgb_map(probs, colors, mode="blend", fade=0.0))[..., :3].astype(int)
    assert np.abs(rgb - want).max() <= 1
    with Image.open(upng) as im:
        u = np.asarray(im.convert("L"))[::2, ::2].astype(float) / 255
    # the normalised entropy, as stored, not divided by log K a second time
    assert u.shape == ent.shape
    assert np.abs(u - np.nan_to_num(ent, nan=1.0)).max() <= 1 / 255 + 1e-6
    assert u.max() == pytest.approx(float(np.nanmax(ent)), abs=1 / 255)


def test_suggest_prints_positions(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["suggest", "--data", trained["data"], "--labels", trained["labels"], "--strategy", "adaptive",
                        "--budget", "7", "--model", trained["model"]], capsys)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "row,col,score,reason" and len(lines) == 8
    labelled = {(int(r["row"]), int(r["col"])) for r in csv.DictReader(open(trained["labels"]))}
    got = [tuple(int(v) for v in ln.split(",")[:2]) for ln in lines[1:]]
    assert len(set(got)) == 7 and not (set(got) & labelled)
    # without a model or labels: a cold start; to a file
    out_csv = tmp_path / "next.csv"
    rc, _, err = run(["suggest", "--data", trained["data"], "--strategy", "bisection", "--budget", "4",
                      "--out", str(out_csv)], capsys)
    assert rc == 0, err
    assert len(out_csv.read_text().strip().splitlines()) == 5


def test_train_from_workspace(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polmap.io import open_dataset
    from polmap.labels import ClassSet
    from polmap.io.project import Workspace

    with open_dataset(tiny["data"]) as ds:
        ws = Workspace.create(tmp_path / "w.polmap.h5", ds, ClassSet.signed())
        ws.labels.import_csv(tiny["labels"])
        ws.save()
    rc, out, err = run(["train", "--data", tiny["data"], "--labels", str(tmp_path / "w.polmap.h5"),
                        "--out", str(tmp_path / "m.pt"), *FAST], capsys)
    assert rc == 0, err
    assert out.strip() == str(tmp_path / "m.pt")


def test_train_keeps_a_painted_region_in_one_fold(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The same 30 labels, but every label of the most frequent class painted as one region (one group):
    # that class cannot be validated honestly, so it is not, and the checkpoint's report says so.
    from polmap.learn.train import TrainedModel

    rows = list(csv.DictReader(open(tiny["labels"])))
    top = max(set(r["class"] for r in rows), key=lambda k: sum(r["class"] == k for r in rows))
    grouped = tmp_path / "grouped.csv"
    with open(grouped, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "col", "class", "group"])
        for i, r in enumerate(rows):
            w.writerow([r["row"], r["col"], r["class"], 999 if r["class"] == top else i])
    # member_gate=null: two epochs leave some members unfit, and the gate would drop them with their folds.
    rc, out, err = run(["train", "--data", tiny["data"], "--labels", str(grouped), "--out", str(tmp_path / "g.pt"),
                        *FAST, "--train", "member_gate=null"], capsys)
    assert rc == 0, err
    rep = TrainedModel.load(tmp_path / "g.pt").report
    n_top = sum(r["class"] == top for r in rows)
    assert rep["n_validated"] == len(rows) - n_top
    assert any("single place" in w and repr(top) in w for w in rep["warnings"])
    assert "warning: classes labelled in a single place" in err and repr(top) in err  # said, not only stored


def test_train_reports_the_symmetry_and_checks_declared_directions(
    tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from polmap.learn.train import TrainedModel

    # The tiny file declares its classes' directions; training says so and checks them.
    rc, out, err = run(["train", "--data", tiny["data"], "--labels", tiny["labels"], "--out", str(tmp_path / "d.pt"),
                        *FAST], capsys)
    assert rc == 0, err
    assert "class directions declared by" in err and "symmetry:" in err
    rep = TrainedModel.load(tmp_path / "d.pt").report
    assert rep["symmetry"]["status"] in ("declared", "found", "none")
    # Directions that turn +x and -x around (a mirrored camera, say) are contradicted or left unused, never
    # silently trusted: the arrows used for flip_cols are never +x -> +x.
    rc, out, err = run(["train", "--data", tiny["data"], "--labels", tiny["labels"], "--out", str(tmp_path / "w.pt"),
                        "--directions", "none=invariant,+x=90,-x=270,+y=0,-y=180", *FAST], capsys)
    assert rc == 0, err
    sym = TrainedModel.load(tmp_path / "w.pt").report["symmetry"]
    names = sym["class_names"]
    flip = sym["arrows"].get("flip_cols")
    assert flip is None or flip[names.index("+x")] != names.index("+x")
    # none given: the file's declaration is not used either
    rc, out, err = run(["train", "--data", tiny["data"], "--labels", tiny["labels"], "--out", str(tmp_path / "n.pt"),
                        "--directions", "", *FAST], capsys)
    assert rc == 0 and "class directions declared by" not in err


# ---------------------------------------------------------------------------------
# errors: one line, exit code 2
# ---------------------------------------------------------------------------------
def test_train_errors(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tiny["data"], str(tmp_path / "m.pt")
    bad = write_csv(tmp_path / "bad.csv", [(1, 1, "+x"), (2, 2, "sideways")])
    expect_error(["train", "--data", data, "--labels", bad, "--out", out], capsys, "unknown class 'sideways'")
    expect_error(["train", "--data", data, "--labels", tiny["labels"], "--classes", "a,b,c", "--out", out],
                 capsys, "unknown class")
    empty = write_csv(tmp_path / "empty.csv", [])
    expect_error(["train", "--data", data, "--labels", empty, "--out", out], capsys, "no labels")
    one = write_csv(tmp_path / "one.csv", [(1, 1, "+x"), (2, 2, "+x"), (3, 3, "+x")])
    expect_error(["train", "--data", data, "--labels", one, "--out", out], capsys, "two classes")
    expect_error(["train", "--data", str(tmp_path / "nope.h5"), "--labels", tiny["labels"], "--out", out],
                 capsys, "does not exist")
    expect_error(["train", "--data", data, "--labels", str(tmp_path / "nope.csv"), "--out", out],
                 capsys, "does not exist")
    expect_error(["train", "--data", data, "--labels", tiny["labels"], "--model", "resnet", "--out", out],
                 capsys, "unknown model 'resnet'")
    outside = write_csv(tmp_path / "outside.csv", [(1, 1, "+x"), (999, 2, "-x")])
    expect_error(["train", "--data", data, "--labels", outside, "--out", out], capsys, "outside the scan")
    assert not Path(out).exists()


def test_model_and_dataset_mismatch(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.npy"
    np.save(other, np.random.default_rng(0).poisson(5, size=(4, 5, 16, 16)).astype(np.uint16))
    expect_error(["predict", "--data", str(other), "--model", trained["model"], "--out", str(tmp_path / "p.h5")],
                 capsys, "detector")
    # labels with other classes than the model's
    cls = write_csv(tmp_path / "axis.csv", [(1, 1, "na"), (2, 2, "vertical")])
    expect_error(["suggest", "--data", trained["data"], "--labels", cls, "--classes", "na,vertical,horizontal",
                  "--model", trained["model"], "--strategy", "adaptive"], capsys, "classes")
    # not a checkpoint / not a prediction / missing files
    expect_error(["predict", "--data", trained["data"], "--model", trained["labels"], "--out", str(tmp_path / "p.h5")],
                 capsys, "checkpoint")
    expect_error(["predict", "--data", trained["data"], "--model", str(tmp_path / "none.pt"),
                  "--out", str(tmp_path / "p.h5")], capsys, "does not exist")
    expect_error(["export", "--pred", trained["labels"], "--png", str(tmp_path / "x.png")], capsys, "not a polmap prediction")
    expect_error(["export", "--pred", trained["pred"]], capsys, "nothing to export")
    expect_error(["export", "--pred", str(tmp_path / "none.h5"), "--png", str(tmp_path / "x.png")], capsys, "does not exist")
    expect_error(["export", "--pred", trained["pred"], "--png", str(tmp_path / "x.png"), "--mode", "paper"],
                 capsys, "3 classes")


def test_workspace_for_other_data(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polmap.io.dataset import Dataset4D
    from polmap.labels import ClassSet
    from polmap.io.project import Workspace

    other = Dataset4D.from_array(np.ones((3, 4, 8, 8), np.uint16), name="other")
    Workspace.create(tmp_path / "w.polmap.h5", other, ClassSet.signed())
    expect_error(["train", "--data", tiny["data"], "--labels", str(tmp_path / "w.polmap.h5"),
                  "--out", str(tmp_path / "m.pt")], capsys, "workspace")


# ---------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------
BENCH_FAST = ["--budgets", "4,8", "--seeds", "1", "--round-size", "4", "--train", "epochs=1",
              "--train", "n_members=2", "--train", "samples_per_epoch=16", "--no-paper", "--quiet"]


def test_benchmark_npy_truth_with_classes(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = tiny["truth"].copy()
    truth[:2, :] = -1
    tpath = tmp_path / "truth.npy"
    np.save(tpath, truth)
    out = tmp_path / "res.json"
    rc, stdout, err = run(["benchmark", "--data", tiny["data"], "--truth", str(tpath), "--classes",
                           ",".join(f"c{i}" for i in range(5)), "--strategies", "random,adaptive",
                           "--out", str(out), *BENCH_FAST], capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["dataset"]["class_names"] == [f"c{i}" for i in range(5)]
    assert res["dataset"]["n_known"] == int((truth >= 0).sum())
    assert set(res["strategies"]) == {"random", "adaptive"}
    for st in res["strategies"].values():
        for cp in st["runs"][0]["checkpoints"]:
            pos = np.array(cp["positions"])
            assert (pos[:, 0] >= 2).all()  # unknown rows never asked
    assert "--truth" in res["command"] and "--classes" in res["command"]
    assert (tmp_path / "res.md").exists() and (tmp_path / "res.png").exists()
    assert str(out) in stdout


def test_benchmark_h5_truth_path(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res.json"
    rc, _, err = run(["benchmark", "--data", tiny["data"], "--truth", tiny["data"] + ":/ground_truth/label_map",
                      "--strategies", "bisection", "--no-baselines", "--no-plot", "--out", str(out), *BENCH_FAST],
                     capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["dataset"]["class_names"] == tiny["names"]
    assert res["strategies"]["bisection"]["budgets"]["8"]["accuracy"]["n"] == 1


def test_benchmark_errors(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.json")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 3), dtype=int))
    expect_error(["benchmark", "--data", tiny["data"], "--truth", str(bad), "--out", out, *BENCH_FAST], capsys, "shape")
    expect_error(["benchmark", "--data", tiny["data"], "--strategies", "random,magic", "--out", out, *BENCH_FAST],
                 capsys, "unknown strategy 'magic'")
    expect_error(["benchmark", "--data", tiny["data"], "--classes", "a,b", "--out", out, *BENCH_FAST],
                 capsys, "class names")
    expect_error(["benchmark", "--data", tiny["data"], "--truth", str(tmp_path / "none.npy"), "--out", out,
                  *BENCH_FAST], capsys)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.ones((4, 5, 8, 8), np.uint16))
    expect_error(["benchmark", "--data", str(plain), "--out", out, *BENCH_FAST], capsys, "no ground truth")
