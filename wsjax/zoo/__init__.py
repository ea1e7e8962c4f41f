"""The model zoo: many ResNet-18s trained on random k-class tasks, stored with Orbax.

Stage entry point `wsjax.zoo.stage.run(config, workdir)`; the base network of the 'pretrained'
init scheme (also the dataset encoder's feature extractor) is `wsjax.zoo.pretrain.base_network`.
"""
from wsjax.zoo.snapshots import load_model, load_variables, read_manifest
