"""The CIFAR backbones of the CRD benchmark that both papers use, registered in timm's model registry.

Importing this package registers `cifar_resnet{8,14,20,32,44,56,110}`, `cifar_resnet{8,32}x4`,
`cifar_resnet50`, `cifar_wrn_{16,40}_{1,2}`, `cifar_vgg{8,11,13,16,19}`, `cifar_mobilenetv2` (width 0.5),
`cifar_shufflev1` and `cifar_shufflev2`, so `timm.create_model("cifar_resnet8x4", num_classes=100)` builds
them (`unixkd.training.models` imports this package, so `import unixkd.training` is enough). Intermediate features for
AT/SP: `model.forward_intermediates(x)` (see `base.py`) or `timm.create_model(name, features_only=True)`.
The rest of timm's model interface (default cfgs, global_pool, grad checkpointing, group_matcher, FX and
TorchScript) is held to timm's own model tests in tests/test_backbones.py.
"""

from . import cifar_mobilenetv2, cifar_resnet, cifar_shufflenet, cifar_vgg, cifar_wrn  # noqa: F401 (registers them)
from .base import CifarNet

NAMES = (
    *cifar_resnet.MODEL_ARGS,
    *cifar_wrn.MODEL_ARGS,
    *cifar_vgg.MODEL_ARGS,
    "cifar_mobilenetv2",
    "cifar_shufflev1",
    "cifar_shufflev2",
)

__all__ = ["CifarNet", "NAMES"]
