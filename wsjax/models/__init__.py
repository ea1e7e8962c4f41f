"""Networks the zoo trains."""
from wsjax.models.resnet import ACTIVATIONS, ResNet18, build, builder, count_params
