"""The model zoo: many ResNet-18s trained on random k-class tasks, stored with Orbax."""
from wsjax.zoo.store import load_model, load_variables, read_manifest
