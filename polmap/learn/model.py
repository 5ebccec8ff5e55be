"""Network definitions: the compact default and the paper's baseline.

Two architectures, both taking ``(N, 1, H, W)`` float32 patterns and returning
``(N, K)`` logits:

``compact`` (default)
    Built for few labels and CPU speed (61 k parameters for 5 classes, 48 px
    input; about 200x faster than ``paper`` per network on a CPU).
    The polar signal is a small intensity difference between the +g and -g
    disks (Friedel asymmetry), i.e. the part of the pattern that is
    antisymmetric under a left/right or up/down mirror. The network therefore
    sees the pattern *and* its two antisymmetric parts (``x - mirror(x)``) as
    input channels, each standardised by its own batch-norm so the few-percent
    asymmetry is not drowned by the bright disk. The final feature map is
    flattened, not globally averaged, so the network knows *where* a disk is
    brighter (global average pooling would throw that away). In a trained
    ensemble the members alternate with and without the antisymmetric channels
    (:attr:`ModelSpec.member_variants`): the two kinds fail in different places.

``paper``
    ThreeLayerCnn as published (Hardy et al., arXiv 2510.00693): 1 x 256 x 256
    input, three [3x3 conv (pad 1) + ReLU + 2x2 max-pool] blocks with 16/32/64
    channels, dense 65,536 -> 128, ReLU, 128 -> K; about 8.4 M parameters, no
    batch norm, no dropout. Kept as a faithful baseline.

:func:`default_preprocess` gives the preprocessing each model was designed
for, as keyword arguments of :class:`polmap.process.preprocess.PreprocessConfig`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from polmap.process.preprocess import INPUT_PRESETS

__all__ = [
    "MODELS",
    "CompactNet",
    "LinearDiscriminant",
    "ModelSpec",
    "SeededDropout",
    "ThreeLayerCnn",
    "build_model",
    "count_parameters",
    "default_preprocess",
    "member_variants",
    "optimize_for_inference",
]


def _check_input(x: torch.Tensor, input_size: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != input_size or x.shape[3] != input_size:
        raise ValueError(
            f"{name} expects patterns of shape (N, 1, {input_size}, {input_size}); "
            f"found {tuple(x.shape)}. Preprocess the data to {input_size} x {input_size} "
            "(PreprocessConfig.output_size) or build the model for this size."
        )


def antisymmetric_channels(x: torch.Tensor) -> torch.Tensor:
    """Stack a pattern with its left/right and up/down antisymmetric parts.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W)

    Returns
    -------
    Tensor, shape (N, 3, H, W)
        ``[x, x - flip_cols(x), x - flip_rows(x)]``. The last two are zero for a
        centrosymmetric pattern and carry the Friedel asymmetry of a polar one
        (assuming the pattern is centred, as ``centring="disk"`` ensures).
    """
    return torch.cat([x, x - x.flip(-1), x - x.flip(-2)], dim=1)


class SeededDropout(nn.Dropout):
    """Dropout that draws its masks from ``self.generator`` when one is set.

    Training members in parallel threads must not share torch's global random
    stream, or the same seed would no longer give the same weights. Without a
    generator it behaves exactly like :class:`torch.nn.Dropout`.
    """

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply dropout (identity in eval mode)."""
        if not self.training or self.p == 0 or self.generator is None:
            return super().forward(x)
        keep = 1.0 - self.p
        mask = torch.empty(x.shape, dtype=x.dtype).bernoulli_(keep, generator=self.generator).to(x.device)
        return x * mask / keep


class CompactNet(nn.Module):
    """Small CNN for few-label polarization classification.

    Parameters
    ----------
    n_classes : int
        Number of output classes.
    input_size : int
        Side of the square input pattern (after preprocessing).
    channels : tuple of int
        Output channels of the convolution blocks.
    hidden : int
        Width of the hidden dense layer.
    dropout : float
        Dropout before each dense layer.
    antisymmetric : bool
        Add the two antisymmetric parts of the pattern as input channels.
    first_stride : int
        Stride of the first convolution (2 halves the cost of the network).
    input_norm : bool
        Standardise each input channel with batch norm.
    """

    def __init__(
        self,
        n_classes: int,
        input_size: int = 48,
        channels: tuple[int, ...] = (16, 32, 64),
        hidden: int = 64,
        dropout: float = 0.25,
        antisymmetric: bool = True,
        first_stride: int = 2,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got n_classes={n_classes}")
        side = input_size
        for i in range(len(channels)):
            side = (side + first_stride - 1) // first_stride if i == 0 else side
            side //= 2
        if side < 1:
            raise ValueError(
                f"input_size={input_size} is too small for {len(channels)} blocks "
                f"(first stride {first_stride}); use at least {first_stride * 2 ** len(channels)} px"
            )
        self.input_size = int(input_size)
        self.antisymmetric = bool(antisymmetric)
        in_ch = 3 if antisymmetric else 1
        # Per-channel standardisation: the antisymmetric parts are ~100x weaker than x.
        self.input_norm = nn.BatchNorm2d(in_ch) if input_norm else nn.Identity()
        layers: list[nn.Module] = []
        c0 = in_ch
        for i, c in enumerate(channels):
            stride = first_stride if i == 0 else 1
            layers += [
                nn.Conv2d(c0, c, 3, padding=1, stride=stride, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c0 = c
        self.features = nn.Sequential(*layers)
        # Flatten the small final map: the layout of bright/dim disks is the signal.
        self.head = nn.Sequential(
            nn.Flatten(),
            SeededDropout(dropout),
            nn.Linear(c0 * side * side, hidden),
            nn.ReLU(inplace=True),
            SeededDropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` for patterns ``(N, 1, H, W)``."""
        _check_input(x, self.input_size, "compact model")
        if self.antisymmetric:
            x = antisymmetric_channels(x)
        return self.head(self.features(self.input_norm(x)))


class LinearDiscriminant(nn.Module):
    """A linear discriminant in a whitened principal-component space of the scan.

    Fitted in closed form (:func:`polmap.learn.linear.fit_discriminant`), not by
    gradient descent; everything it needs is a buffer, so it is saved and
    loaded like the networks.

    Parameters
    ----------
    n_classes : int
    input_size : int
        Side of the square input pattern.
    n_components : int
        Dimension of the whitened space.
    """

    def __init__(self, n_classes: int, input_size: int = 48, n_components: int = 40) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got n_classes={n_classes}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.input_size = int(input_size)
        self.register_buffer("mean", torch.zeros(1, input_size, input_size))
        self.register_buffer("basis", torch.zeros(n_components, input_size * input_size))
        self.register_buffer("weight", torch.zeros(n_components, n_classes))
        self.register_buffer("bias", torch.zeros(n_classes))

    def set_parameters(self, mean: Any, basis: Any, weight: Any, bias: Any) -> None:
        """Copy in a fitted space and discriminant (arrays of the buffers' shapes)."""
        for name, value in (("mean", mean), ("basis", basis), ("weight", weight), ("bias", bias)):
            buf = getattr(self, name)
            t = torch.as_tensor(value, dtype=torch.float32).reshape(buf.shape)
            buf.copy_(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` for patterns ``(N, 1, H, W)``."""
        _check_input(x, self.input_size, "linear model")
        z = (x[:, 0] - self.mean).flatten(1) @ self.basis.T  # flatten: batch size stays free when traced
        return z @ self.weight + self.bias


class ThreeLayerCnn(nn.Module):
    """The paper's ThreeLayerCnn (Hardy et al. 2025), reimplemented.

    Parameters
    ----------
    n_classes : int
        Number of output classes (3 in the paper).
    input_size : int
        Side of the square input; 256 in the paper (dense layer 65,536 -> 128).
    """

    def __init__(self, n_classes: int, input_size: int = 256) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got n_classes={n_classes}")
        if input_size % 8 or input_size < 8:
            raise ValueError(f"ThreeLayerCnn needs an input size divisible by 8 (256 in the paper), got {input_size}")
        self.input_size = int(input_size)
        layers: list[nn.Module] = []
        c0 = 1
        for c in (16, 32, 64):
            layers += [nn.Conv2d(c0, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c0 = c
        self.features = nn.Sequential(*layers)
        side = input_size // 8
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(inplace=True), nn.Linear(128, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` for patterns ``(N, 1, H, W)``."""
        _check_input(x, self.input_size, "paper model")
        return self.head(self.features(x))


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    Attributes
    ----------
    builder : callable
        ``builder(n_classes, input_size, **cfg) -> nn.Module``.
    default_input_size : int
        Input side the architecture was designed for.
    description : str
        One line for menus and reports.
    preprocess : dict
        Keyword arguments of ``PreprocessConfig`` recommended for it.
    member_variants : tuple of dict
        Architecture options cycled over the members of a trained ensemble
        (member ``m`` gets ``member_variants[m % len]``); ``({},)`` for a
        homogeneous ensemble.
    families : tuple of str
        For a composite: the registered models trained side by side, the
        better by out-of-fold accuracy kept (both when they tie); empty for
        a single architecture.
    """

    builder: Callable[..., nn.Module]
    default_input_size: int
    description: str
    preprocess: dict[str, Any]
    member_variants: tuple[dict[str, Any], ...] = ({},)
    families: tuple[str, ...] = ()



#: Registered architectures by name.
MODELS: dict[str, ModelSpec] = {
    "auto": ModelSpec(
        builder=CompactNet,
        default_input_size=48,
        description="compact CNN ensemble and linear discriminant side by side; the better by out-of-fold "
        "accuracy on your labels is kept (both when they tie)",
        # Each pattern averaged with its 3 x 3 scan neighbours: measured with 20/50 random labels
        # (2 seeds), external bubbles 82.3/95.9 -> 94.9/97.7 %, external mixed (2e4 e-) 53.4/65.9
        # -> 62.8/85.4 %, demo 86.9/99.6 -> 91.9/99.6 %, hard 79.1/98.8 -> 81.4/98.6 %.
        preprocess=INPUT_PRESETS["boxed48"],
        families=("compact", "linear"),
    ),
    "compact": ModelSpec(
        builder=CompactNet,
        default_input_size=48,
        description="compact CNN, 61 k parameters, 48 px; ensemble members alternate with and without "
        "antisymmetric (Friedel) input channels",
        preprocess=INPUT_PRESETS["centred48"],
        # Measured on simulated scans: members that see the antisymmetric parts
        # and members that see only the pattern fail on different label sets
        # (where the Friedel asymmetry vanishes with thickness vs. elsewhere);
        # mixing them beat either kind alone on every preset tried.
        member_variants=({"antisymmetric": True}, {"antisymmetric": False}),
    ),
    "linear": ModelSpec(
        builder=LinearDiscriminant,
        default_input_size=48,
        description="linear discriminant in a whitened principal-component space of the scan (closed form)",
        preprocess=INPUT_PRESETS["boxed48"],
    ),
    "paper": ModelSpec(
        builder=ThreeLayerCnn,
        default_input_size=256,
        description="paper's ThreeLayerCnn (Hardy et al. 2025), ~8.4 M parameters, 256 px",
        preprocess=INPUT_PRESETS["paper256"],
    ),
}


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(name: str, n_classes: int, input_size: int | None = None, **cfg: Any) -> nn.Module:
    """Build a registered network.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (``"compact"`` or ``"paper"``).
    n_classes : int
        Number of classes (at least 2).
    input_size : int, optional
        Input side in pixels; the model's default when omitted.
    **cfg
        Architecture options passed to the builder (e.g. ``channels``,
        ``dropout`` for ``compact``).

    Returns
    -------
    torch.nn.Module
        Takes ``(N, 1, input_size, input_size)``, returns ``(N, n_classes)`` logits.

    Raises
    ------
    ValueError
        Unknown name, fewer than 2 classes, an unsupported input size or option.
    """
    spec = _spec(name)
    size = int(input_size) if input_size is not None else spec.default_input_size
    try:
        return spec.builder(int(n_classes), size, **cfg)
    except TypeError as exc:  # an unknown keyword: say which model and what it accepts
        raise ValueError(f"bad option for model {name!r}: {exc}") from exc


def member_variants(name: str) -> list[dict[str, Any]]:
    """Architecture options cycled over the members of an ensemble of this model."""
    return [dict(v) for v in _spec(name).member_variants]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a network; for a closed-form model, its fitted values."""
    n = int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))
    return n or int(sum(b.numel() for b in model.buffers()))


def default_preprocess(name: str = "compact") -> dict[str, Any]:
    """Preprocessing a model was designed for.

    Parameters
    ----------
    name : str
        ``"compact"`` (disk centring, sqrt scaling, max normalisation, 48 px)
        or ``"paper"`` (5 x 5 boxing, min-max, 256 px, no centring, no log).

    Returns
    -------
    dict
        Keyword arguments for :class:`polmap.process.preprocess.PreprocessConfig`
        (``PreprocessConfig(**default_preprocess("paper"))``).
    """
    return dict(_spec(name).preprocess)


def _fuse_sequential(seq: nn.Sequential) -> nn.Sequential:
    mods = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        if isinstance(mods[i], nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(mods[i], mods[i + 1]))
            i += 2
        else:
            out.append(mods[i])
            i += 1
    return nn.Sequential(*out)


def optimize_for_inference(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """An inference-only copy of a network: same outputs, faster on CPU.

    Batch norm is folded into the convolutions and the memory layout made
    channels-last (about 2x on CPU). With an ``example`` input the copy is also
    traced and frozen with TorchScript's ``optimize_for_inference`` (measured
    another 1.5x: fused conv + ReLU, no layout reorders between layers); the
    traced copy is checked against the eager one on the example and the eager
    copy is returned if tracing fails or differs. The original model is not
    modified.

    Parameters
    ----------
    model : nn.Module
        A trained network from :func:`build_model`.
    example : Tensor, shape (N, 1, H, W), optional
        A typical input (on the model's device) to trace with.

    Returns
    -------
    nn.Module
        In eval mode; call it under ``torch.inference_mode()``.
    """
    m = copy.deepcopy(model).eval()
    if isinstance(getattr(m, "features", None), nn.Sequential):
        m.features = _fuse_sequential(m.features)
    m = m.to(memory_format=torch.channels_last)
    if example is None:
        return m
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about the input-shape check
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m, example)))
            ok = torch.allclose(traced(example), m(example), atol=1e-4, rtol=1e-4)
    except Exception:  # noqa: BLE001 - any tracing problem: the eager copy is as correct
        return m
    return traced if ok else m
