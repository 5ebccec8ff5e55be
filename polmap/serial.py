"""Plain-JSON conversion shared by the benchmark, the prediction file and the checkpoints."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def json_safe(o: Any) -> Any:
    """``o`` with numpy scalars and arrays as Python values, tuples as lists and NaN/inf as None.

    Parameters
    ----------
    o : any
        Nested mappings, sequences, numpy values and plain values.

    Returns
    -------
    any
        What :func:`json.dumps` accepts; other objects are left as they are
        (``json.dumps(..., default=str)`` then names them).
    """
    if isinstance(o, Mapping):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return None if math.isnan(f) or math.isinf(f) else f
    return o
