"""Figures and images (plotly, PIL): the polarization map, patterns, legends, exports."""
