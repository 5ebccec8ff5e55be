"""Whole-scan inference: chunking, bounded memory, uncertainty, compatibility checks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from polmap.io.dataset import Dataset4D
from polmap.learn.model import build_model
from polmap.learn.predict import (
    IncompatibleModelError,
    Prediction,
    PredictionCancelled,
    check_compatible,
    predict_arrays,
    predict_scan,
    uncertainty_maps,
)
from polmap.learn.train import TrainedModel



SIGNED = ["none", "+x", "-x", "+y", "-y"]
SIZE = 32
CONFIG = {"output_size": SIZE, "scaling": "sqrt", "normalise": "max"}


class CropPreprocessor:
    """A minimal stand-in with the Preprocessor interface: centre crop, sqrt, max-normalise.

    Records the largest chunk it was handed, to check that prediction streams.
    """

    def __init__(self, config: dict | None = None) -> None:
        self.config_dict = dict(CONFIG if config is None else config)
        self.detector_shape = (40, 40)
        self.max_rows_seen = 0
        self.is_fitted = True

    def _transform(self, raw: np.ndarray) -> np.ndarray:
        o = (raw.shape[-1] - SIZE) // 2
        x = np.sqrt(raw[..., o : o + SIZE, o : o + SIZE].astype(np.float32))
        return x / np.maximum(x.max(axis=(-1, -2), keepdims=True), 1e-6)

    def iter_transformed(self, dataset: Dataset4D, max_bytes: int):
        for rows, block in dataset.iter_chunks(max_bytes):
            self.max_rows_seen = max(self.max_rows_seen, rows.stop - rows.start)
            yield rows, self._transform(block).reshape(-1, SIZE, SIZE)

    def state_dict(self) -> dict:
        return {"config": dict(self.config_dict), "detector_shape": list(self.detector_shape)}


class CountingArray:
    """A lazy 4-D array that counts how many patterns each read returns."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.largest_read = 0

    def __getitem__(self, key):
        out = self._data[key]
        n = int(np.prod(out.shape[:-2])) if out.ndim > 2 else 1
        self.largest_read = max(self.largest_read, n)
        return out


def make_model(members: int = 2, seed: int = 0) -> TrainedModel:
    nets = []
    for m in range(members):
        torch.manual_seed(seed + m)
        nets.append(build_model("compact", 5, SIZE).eval())
    return TrainedModel(
        nets, SIGNED, ["#888888", "#ff0000", "#00ffff", "#80ff00", "#8000ff"],
        {"name": "compact", "n_classes": 5, "input_size": SIZE, "options": {}},
        preprocess_state=CropPreprocessor().state_dict(),
    )


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(50, size=(7, 6, 40, 40)).astype(np.uint16)


def test_uncertainty_maps_by_hand() -> None:
    same = np.array([[[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]] * 3, dtype=np.float32)  # 3 members agree
    proba, ent, margin, dis = uncertainty_maps(same)
    np.testing.assert_allclose(proba, same[0], atol=1e-6)
    np.testing.assert_allclose(margin, [0.5, 0.0], atol=1e-6)
    assert ent[1] == pytest.approx(1.0, abs=1e-5) and 0 < ent[0] < 1
    np.testing.assert_allclose(dis, 0, atol=1e-6)  # agreement: no epistemic part
    split = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=np.float32)  # two confident members disagree
    proba, ent, margin, dis = uncertainty_maps(split)
    np.testing.assert_allclose(proba, [[0.5, 0.5]])
    assert dis[0] == pytest.approx(1.0, abs=1e-5) and margin[0] == pytest.approx(0.0)
    _, _, _, dis1 = uncertainty_maps(split[:1])
    assert dis1[0] == 0  # one member: zeros


def test_predict_scan_matches_predict_arrays_for_any_chunking(scan: np.ndarray) -> None:
    model = make_model()
    ds = Dataset4D.from_array(scan)
    pre = CropPreprocessor()
    X = pre._transform(scan.reshape(-1, 40, 40))
    ref = predict_arrays(model, X)
    pattern_bytes = 40 * 40 * 2
    for max_bytes in (6 * pattern_bytes, 13 * pattern_bytes, 10**9):
        pred = predict_scan(model, ds, pre, max_bytes=max_bytes, batch_size=5)
        assert isinstance(pred, Prediction) and pred.scan_shape == (7, 6)
        assert pred.probabilities.shape == (7, 6, 5) and pred.probabilities.dtype == np.float32
        assert pred.label_map.dtype == np.int16
        np.testing.assert_allclose(pred.probabilities.reshape(-1, 5), ref["probabilities"], atol=1e-5)
        np.testing.assert_array_equal(pred.label_map.ravel(), ref["labels"])
        np.testing.assert_allclose(pred.margin.ravel(), ref["margin"], atol=1e-5)
        np.testing.assert_allclose(pred.disagreement.ravel(), ref["disagreement"], atol=1e-5)
        assert pred.rows_done == 7
    assert pred.class_names == SIGNED and pred.class_colors[1] == "#ff0000"
    t = pred.timing
    assert t["n_patterns"] == 42 and t["n_members"] == 2 and t["patterns_per_second"] > 0
    assert t["seconds"] >= t["inference_seconds"] >= 0
    assert sum(pred.class_fractions().values()) == pytest.approx(1.0)
    np.testing.assert_allclose(pred.uncertainty, 1 - pred.margin)
    assert set(pred.arrays()) == {"probabilities", "label_map", "entropy", "margin", "disagreement"}


def test_lazy_dataset_is_read_one_chunk_at_a_time(scan: np.ndarray) -> None:
    arr = CountingArray(scan)
    ds = Dataset4D(arr, source="lazy")
    pre = CropPreprocessor()
    row_bytes = 6 * 40 * 40 * 2
    predict_scan(make_model(1), ds, pre, max_bytes=2 * row_bytes)
    assert pre.max_rows_seen == 2
    assert arr.largest_read <= 2 * 6  # never more than two scan rows in memory


def test_single_member_has_zero_disagreement(scan: np.ndarray) -> None:
    pred = predict_scan(make_model(1), Dataset4D.from_array(scan), CropPreprocessor())
    assert np.all(pred.disagreement == 0)
    assert np.all((pred.entropy >= 0) & (pred.entropy <= 1))


def test_progress_and_cancel(scan: np.ndarray) -> None:
    ds = Dataset4D.from_array(scan)
    row_bytes = 6 * 40 * 40 * 2
    seen: list[dict] = []
    stop = threading.Event()

    def progress(d: dict) -> None:
        seen.append(d)
        if d["rows_done"] >= 3:
            stop.set()

    with pytest.raises(PredictionCancelled, match="after 3 of 7 scan rows") as info:
        predict_scan(make_model(), ds, CropPreprocessor(), max_bytes=row_bytes, progress=progress, cancel=stop)
    part = info.value.partial
    assert part.rows_done == 3
    assert (part.label_map[:3] >= 0).all() and (part.label_map[3:] == -1).all()
    assert np.isnan(part.probabilities[3:]).all()
    assert [d["rows_done"] for d in seen] == [1, 2, 3] and seen[0]["rows_total"] == 7
    with pytest.raises(PredictionCancelled, match="after 0 of 7"):
        predict_scan(make_model(), ds, CropPreprocessor(), cancel=lambda: True)


def test_check_compatible_refuses_mismatches(scan: np.ndarray) -> None:
    model = make_model()
    ds = Dataset4D.from_array(scan)
    check_compatible(model, ds, CropPreprocessor(), class_names=SIGNED)  # fine
    with pytest.raises(IncompatibleModelError, match="classes .* but the current class set"):
        check_compatible(model, ds, class_names=["na", "vertical", "horizontal"])
    other_detector = Dataset4D.from_array(np.zeros((2, 2, 64, 64), np.uint16), name="big")
    with pytest.raises(IncompatibleModelError, match=r"\(40, 40\) detector; big has \(64, 64\)"):
        check_compatible(model, other_detector)
    with pytest.raises(IncompatibleModelError, match="scaling: model 'sqrt' vs now 'log'"):
        check_compatible(model, ds, CropPreprocessor({**CONFIG, "scaling": "log"}))
    with pytest.raises(IncompatibleModelError, match="other preprocessing"):
        predict_scan(model, ds, CropPreprocessor({**CONFIG, "output_size": 48}))
    # A model without recorded preprocessing still checks the input size.
    bare = make_model()
    bare.preprocess_state = None
    with pytest.raises(IncompatibleModelError, match="48 px patterns but the model takes 32 px"):
        check_compatible(bare, ds, CropPreprocessor({**CONFIG, "output_size": 48}))


def test_parallel_inference_equals_sequential() -> None:
    model = make_model(3)
    X = np.random.default_rng(2).random((50, SIZE, SIZE), dtype=np.float32)
    seq = model.member_probabilities(X, batch_size=16)
    torch.set_num_threads(2)
    try:
        par = model.member_probabilities(X, batch_size=16)  # 3 members x 4 batches on 2 threads
        assert torch.get_num_threads() == 2  # restored after the parallel section
    finally:
        torch.set_num_threads(1)
    np.testing.assert_allclose(par, seq, atol=1e-6)


def test_traced_members_give_the_same_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    import polmap.learn.train as train_mod

    model = make_model(2)
    X = np.random.default_rng(4).random((9, SIZE, SIZE), dtype=np.float32)
    eager = model.member_probabilities(X)
    monkeypatch.setattr(train_mod, "TRACE_MIN_PATTERNS", 0)
    traced = model.member_probabilities(X)
    assert set(model._fast) == {"eager", "traced"}
    assert isinstance(model._fast["traced"][0], torch.jit.ScriptModule)
    np.testing.assert_allclose(traced, eager, atol=1e-5)


def test_predict_arrays_shapes() -> None:
    out = predict_arrays(make_model(3), np.random.default_rng(1).random((11, SIZE, SIZE), dtype=np.float32))
    assert out["probabilities"].shape == (11, 5) and out["labels"].shape == (11,)
    np.testing.assert_allclose(out["probabilities"].sum(1), 1, atol=1e-5)
    assert (out["disagreement"] >= 0).all()
    with pytest.raises(ValueError, match="takes 32 x 32"):
        predict_arrays(make_model(), np.zeros((2, 48, 48), np.float32))


def test_end_to_end_with_the_real_preprocessor(scan: np.ndarray) -> None:
    pre_mod = pytest.importorskip("polmap.process.preprocess")
    from polmap.learn.model import default_preprocess

    rng = np.random.default_rng(3)
    rr, cc = np.mgrid[0:40, 0:40] - 19.5
    disk = ((rr**2 + cc**2) < 36).astype(float) * 200 + 5
    data = rng.poisson(np.broadcast_to(disk, (5, 4, 40, 40))).astype(np.uint16)
    ds = Dataset4D.from_array(data)
    cfg = pre_mod.PreprocessConfig(**{**default_preprocess("compact"), "output_size": SIZE})
    pre = pre_mod.Preprocessor(cfg).fit(ds)
    model = make_model()
    model.preprocess_state = pre.state_dict()
    pred = predict_scan(model, ds, pre)
    X = pre.transform_positions(ds, np.argwhere(np.ones((5, 4), bool)))
    np.testing.assert_allclose(pred.probabilities.reshape(-1, 5), model.predict_proba(X), atol=1e-5)
    other = pre_mod.Preprocessor(pre_mod.PreprocessConfig(**{**default_preprocess("compact"), "output_size": SIZE, "scaling": "log"})).fit(ds)
    with pytest.raises(IncompatibleModelError, match="scaling"):
        predict_scan(model, ds, other)


def test_prefetch_keeps_order_bounds_memory_and_raises_in_the_caller() -> None:
    from polmap.learn.predict import _Prefetch

    alive = {"now": 0, "most": 0}
    lock = threading.Lock()

    def source(n: int, fail_at: int | None = None):
        for i in range(n):
            if i == fail_at:
                raise OSError(f"read error at chunk {i}")
            with lock:
                alive["now"] += 1
                alive["most"] = max(alive["most"], alive["now"])
            yield i

    it = _Prefetch(source(8))
    got = []
    for i in it:
        time.sleep(0.01)  # the consumer is slower: the producer would run ahead if it could
        got.append(i)
        with lock:
            alive["now"] -= 1  # done with this item
    it.close()
    assert got == list(range(8)) and alive["most"] <= 2
    bad = _Prefetch(source(5, fail_at=3))
    with pytest.raises(OSError, match="read error at chunk 3"):
        list(bad)
    bad.close()
    # Closing early stops the worker instead of leaving it blocked.
    early = _Prefetch(source(100))
    next(early)
    early.close()
    assert not early._t.is_alive()


def test_a_large_scan_fed_in_small_chunks_uses_the_traced_members() -> None:
    # 64 x 64 = 4,096 patterns, two rows per chunk: each chunk is far below the tracing
    # threshold, the job is not, so predict_scan traces once for all chunks (~1.5x faster).
    from polmap.learn.train import TRACE_MIN_PATTERNS

    scan = np.random.default_rng(3).poisson(5.0, size=(64, 64, 40, 40)).astype(np.uint16)
    assert scan.shape[0] * scan.shape[1] >= TRACE_MIN_PATTERNS
    ds = Dataset4D(scan, source="big")
    model = make_model(2)
    pred = predict_scan(model, ds, CropPreprocessor(), max_bytes=2 * 64 * 40 * 40 * 2)
    assert set(model._fast) == {"traced"} and pred.rows_done == 64
    small = make_model(2)
    predict_scan(small, Dataset4D(scan[:8], source="small"), CropPreprocessor())
    assert set(small._fast) == {"eager"}
