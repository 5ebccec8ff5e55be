"""The 8 symmetry operations of a square detector (numpy only; tensors work too).

Used by the symmetry discovery, the whitened linear space and the augmentation:
which operation maps which class onto which is learnt from the data
(:mod:`polmap.learn.symmetry`), never read from a class name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["OP_MATRICES", "SYMMETRY_OPS", "apply_op", "compose_ops"]


#: The 8 symmetry operations of a square detector, by name.
SYMMETRY_OPS: tuple[str, ...] = (
    "identity",
    "flip_cols",  # mirror left/right: +x <-> -x
    "flip_rows",  # mirror up/down: +y <-> -y
    "rot180",
    "transpose",  # mirror in the main diagonal: x <-> y
    "anti_transpose",  # mirror in the other diagonal: +x <-> -y
    "rot90",  # as numpy.rot90: counter-clockwise as displayed, +x -> -y
    "rot270",
)

#: Each operation as a matrix on (row, col) offsets from the pattern centre.
OP_MATRICES: dict[str, np.ndarray] = {
    "identity": np.array([[1, 0], [0, 1]]),
    "flip_cols": np.array([[1, 0], [0, -1]]),
    "flip_rows": np.array([[-1, 0], [0, 1]]),
    "rot180": np.array([[-1, 0], [0, -1]]),
    "transpose": np.array([[0, 1], [1, 0]]),
    "anti_transpose": np.array([[0, -1], [-1, 0]]),
    "rot90": np.array([[0, -1], [1, 0]]),
    "rot270": np.array([[0, 1], [-1, 0]]),
}


def compose_ops(first: str, then: str) -> str:
    """The operation equal to ``first`` followed by ``then``.

    Parameters
    ----------
    first, then : str
        Names from :data:`SYMMETRY_OPS`.

    Returns
    -------
    str
        ``apply_op(apply_op(x, first), then) == apply_op(x, compose_ops(first, then))``.
    """
    m = OP_MATRICES[then] @ OP_MATRICES[first]
    for name, mat in OP_MATRICES.items():
        if np.array_equal(mat, m):
            return name
    raise AssertionError("the square's operations form a group")  # pragma: no cover

def apply_op(images: Any, op: str) -> Any:
    """Apply a symmetry operation to the last two axes.

    Parameters
    ----------
    images : ndarray or torch.Tensor, shape (..., H, W), H == W for transposes/rotations
    op : str
        One of :data:`SYMMETRY_OPS`.

    Returns
    -------
    Same type as ``images``: a feature at offset ``d`` from the centre moves to
    ``OP_MATRICES[op] @ d``.
    """
    if op not in OP_MATRICES:
        raise ValueError(f"unknown symmetry operation {op!r}; choose one of {list(SYMMETRY_OPS)}")
    # A tensor is handled by its own methods (no torch import here: this module is numpy only).
    is_array = not hasattr(images, "flip")
    if is_array:
        images = np.asarray(images)

    def flip(a: Any, axis: int) -> Any:
        return np.flip(a, axis) if is_array else a.flip(axis)

    def transpose(a: Any) -> Any:
        return np.swapaxes(a, -1, -2) if is_array else a.transpose(-1, -2)

    if op == "identity":
        return images
    if op == "flip_cols":
        return flip(images, -1)
    if op == "flip_rows":
        return flip(images, -2)
    if op == "rot180":
        return flip(flip(images, -1), -2)
    if op == "transpose":
        return transpose(images)
    if op == "anti_transpose":
        return flip(flip(transpose(images), -1), -2)
    if op == "rot90":
        return flip(transpose(images), -2)
    return flip(transpose(images), -1)  # rot270
