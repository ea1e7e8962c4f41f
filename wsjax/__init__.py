"""wsjax: weight space learning in JAX."""
