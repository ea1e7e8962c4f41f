"""Conditional sampling: (class set, target result) -> ResNet-18 weights."""
from wsjax.sample.generate import Generator
