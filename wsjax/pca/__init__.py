"""Per-named-parameter PCA of a zoo: `load`, `paths`, `encode`, `decode`, `load_coeffs`."""
from wsjax.pca.fit import PCA, decode, encode
from wsjax.pca.stage import load, load_coeffs, paths

__all__ = ["PCA", "decode", "encode", "load", "load_coeffs", "paths"]
