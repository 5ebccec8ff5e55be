"""polmap: map ferroelectric polarization domains from 4D-STEM data with deep learning.

The core package is pure Python + numpy + torch; it never imports streamlit
(the dashboard lives in ``app.py``/``pages/`` and ``polmap.app``).
"""

from polmap.io.dataset import Calibration, Dataset4D, DatasetError, GroundTruth

__version__ = "0.1.0"

__all__ = ["Calibration", "Dataset4D", "DatasetError", "GroundTruth", "__version__"]
