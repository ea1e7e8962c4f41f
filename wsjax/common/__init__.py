"""Pieces every stage shares: config checks, Orbax checkpoints, atomic writes, logs, progress."""
