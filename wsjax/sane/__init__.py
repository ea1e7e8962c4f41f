"""SANE-style weight encoder: `load(workdir)` -> Encoder with `embed`; `load_embeddings(workdir)`."""
from wsjax.sane.stage import Encoder, load, load_embeddings, paths

__all__ = ["Encoder", "load", "load_embeddings", "paths"]
