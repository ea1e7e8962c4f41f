"""Weight autoencoder on PCA coefficients: `load(workdir)` -> AE with `encode`/`decode`."""
from wsjax.ae.stage import AE, load, load_latents, paths

__all__ = ["AE", "load", "load_latents", "paths"]
