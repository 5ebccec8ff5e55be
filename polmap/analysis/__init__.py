"""Analysis of maps and patterns: uncertainty measures, domain walls, the conventional and PCA-kNN baselines."""
