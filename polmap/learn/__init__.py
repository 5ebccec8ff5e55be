"""Learning: networks and the linear discriminant, augmentation, training, prediction, symmetry discovery, sampling."""
