"""Networks the zoo trains."""
from wsjax.models.resnet import ACTIVATIONS, ResNet18, build, count_params
