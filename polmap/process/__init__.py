"""Detector-level processing: preprocessing for the models, virtual detectors, the square's symmetry operations."""
