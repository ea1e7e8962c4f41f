"""SANE-style weight encoder: `load(workdir)` -> Codec (`embed`, `latents`, `decode`);
`load_embeddings(workdir)`; `sample` draws new networks by KDE in its latent space."""
from wsjax.sane.stage import Codec, done, load, load_embeddings, paths

__all__ = ["Codec", "done", "load", "load_embeddings", "paths"]
