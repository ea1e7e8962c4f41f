"""Weight autoencoder on PCA coefficients: `load(workdir)` -> AE with `encode`/`decode`."""
from wsjax.ae.train import AE, load

__all__ = ["AE", "load"]
