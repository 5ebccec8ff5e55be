"""Network definitions: shapes, sizes, the paper baseline, inference fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polmap.learn.model import (
    MODELS,
    CompactNet,
    ThreeLayerCnn,
    antisymmetric_channels,
    build_model,
    count_parameters,
    default_preprocess,
    member_variants,
    optimize_for_inference,
)




def test_registry_and_defaults() -> None:
    assert set(MODELS) >= {"compact", "paper"}
    m = build_model("compact", 5)
    assert isinstance(m, CompactNet) and m.input_size == MODELS["compact"].default_input_size == 48
    p = build_model("paper", 3)
    assert isinstance(p, ThreeLayerCnn) and p.input_size == 256


def test_member_variants() -> None:
    assert member_variants("compact") == [{"antisymmetric": True}, {"antisymmetric": False}]
    assert member_variants("paper") == [{}]
    v = member_variants("compact")
    v[0]["antisymmetric"] = False  # a copy
    assert member_variants("compact")[0] == {"antisymmetric": True}
    plain = build_model("compact", 5, antisymmetric=False)
    assert plain.input_norm.num_features == 1 and count_parameters(plain) < count_parameters(build_model("compact", 5))


def test_compact_output_shape_and_size() -> None:
    torch.manual_seed(0)
    m = build_model("compact", 5, 48).eval()
    out = m(torch.rand(7, 1, 48, 48))
    assert out.shape == (7, 5)
    n = count_parameters(m)
    assert 20_000 < n < 1_000_000
    # Other sizes build and run as well.
    assert build_model("compact", 3, 64).eval()(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_paper_network_is_faithful() -> None:
    m = build_model("paper", 3, 256)
    # conv 1->16, 16->32, 32->64 (3x3 + bias) + dense 65,536->128 + 128->3
    expected = (16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (65_536 * 128 + 128) + (128 * 3 + 3)
    assert count_parameters(m) == expected == 8_412_419
    assert not any(isinstance(x, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for x in m.modules())
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))
    ]
    assert m.eval()(torch.rand(2, 1, 256, 256)).shape == (2, 3)


def test_wrong_input_size_is_a_clear_error() -> None:
    m = build_model("compact", 5, 48)
    with pytest.raises(ValueError, match=r"\(N, 1, 48, 48\).*found \(2, 1, 32, 32\)"):
        m(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="256"):
        build_model("paper", 3)(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        build_model("compact", 5, 8)
    with pytest.raises(ValueError, match="divisible by 8"):
        build_model("paper", 3, 100)


def test_bad_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", 3)
    with pytest.raises(ValueError, match="bad option for model 'compact'"):
        build_model("compact", 3, 48, colour="red")
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model("compact", 1)


def test_antisymmetric_channels_carry_only_the_friedel_part() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    x[0, 0, 2, 1] = x[0, 0, 2, 3] = 0.5  # centrosymmetric pair along x
    a = antisymmetric_channels(x)
    assert a.shape == (1, 3, 5, 5)
    assert torch.equal(a[:, 0], x[:, 0]) and a[:, 1:].abs().max() == 0
    x[0, 0, 2, 3] = 0.6  # +x disk brighter
    a = antisymmetric_channels(x)
    assert torch.isclose(a[0, 1, 2, 3], torch.tensor(0.1)) and torch.isclose(a[0, 1, 2, 1], torch.tensor(-0.1))
    assert a[0, 2].abs().max() == 0  # nothing changes up/down


def test_optimize_for_inference_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    m = build_model("compact", 5, 48)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(3):  # make batch-norm statistics non-trivial
        loss = torch.nn.functional.cross_entropy(m(torch.rand(16, 1, 48, 48)), torch.randint(0, 5, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    fast = optimize_for_inference(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fast.features.modules())
    x = torch.rand(9, 1, 48, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), m(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.features.modules())  # original untouched


def test_default_preprocess() -> None:
    paper = default_preprocess("paper")
    assert paper["boxing"] == 5 and paper["normalise"] == "minmax" and paper["output_size"] == 256
    assert paper["centring"] == "none" and paper["scaling"] == "none"
    compact = default_preprocess("compact")
    assert compact["output_size"] == MODELS["compact"].default_input_size
    assert compact["centring"] == "disk"  # the antisymmetric channels need a centred pattern
    compact["output_size"] = 1  # a copy: the registry is not changed
    assert default_preprocess("compact")["output_size"] == 48
    pre = pytest.importorskip("polmap.process.preprocess")
    for name in ("compact", "paper"):
        cfg = pre.PreprocessConfig(**default_preprocess(name))
        assert cfg.output_size == MODELS[name].default_input_size
    with pytest.raises(ValueError, match="unknown model"):
        default_preprocess("vgg")


def test_compact_is_deterministic_in_eval_mode() -> None:
    torch.manual_seed(3)
    a = build_model("compact", 5)
    torch.manual_seed(3)
    b = build_model("compact", 5)
    x = torch.from_numpy(np.random.default_rng(0).random((4, 1, 48, 48), dtype=np.float32))
    with torch.inference_mode():
        assert torch.equal(a.eval()(x), b.eval()(x))
