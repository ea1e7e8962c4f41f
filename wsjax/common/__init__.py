"""Pieces every stage shares: config checks, Orbax store, logs, progress."""
