"""Networks the zoo trains."""
from wsjax.models.resnet import ResNet18, build, count_params
