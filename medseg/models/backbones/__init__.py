"""Backbones: natural-image encoders exposing multi-scale features, for FCN/DeepLab/PSPNet-style segmentation heads.

``create_backbone(name, spatial_dims, in_channels, *, output_stride=None, pretrained=None, **options)`` builds one;
``list_backbones()`` lists the names and ``get_backbone_info(name)`` gives the paper and its verified parameter figure.
Every backbone's ``forward(x)`` returns a list of feature maps with :attr:`Backbone.out_channels` and
:attr:`Backbone.strides`; ``output_stride`` 8/16 replaces the last strides by dilation where the design allows.
Pretrained weights come only from local files in the torchvision or timm key layout
(:func:`~medseg.models.backbones.pretrained.load_pretrained`); neither library is imported and nothing is downloaded.

Families: VGG-16 (``vgg16``, ``vgg16_bn``), ResNet (``resnet18/34/50/101``), DRN (``drn_c_26/42``,
``drn_d_22/38/54``), MobileNetV2 (``mobilenetv2``), Xception-65 (``xception65``), DenseNet (``densenet121/161``,
``densenet``), HRNetV2 (``hrnetv2_w18/w48``), ShuffleNet v1/v2 (``shufflenet_v1``, ``shufflenet_v2``), BiSeNet's
Xception39 (``xception39``), VoVNet (``vovnet39/57``), OSNet (``osnet``) and EfficientNet (``efficientnet_b0``,
``efficientnet_b5``).
"""

from medseg.models.backbones import densenet as _densenet  # noqa: F401
from medseg.models.backbones import drn as _drn  # noqa: F401
from medseg.models.backbones import efficientnet as _efficientnet  # noqa: F401
from medseg.models.backbones import hrnet as _hrnet  # noqa: F401
from medseg.models.backbones import mobilenetv2 as _mobilenetv2  # noqa: F401
from medseg.models.backbones import osnet as _osnet  # noqa: F401
from medseg.models.backbones import resnet as _resnet  # noqa: F401
from medseg.models.backbones import shufflenet as _shufflenet  # noqa: F401
from medseg.models.backbones import vgg as _vgg  # noqa: F401
from medseg.models.backbones import vovnet as _vovnet  # noqa: F401
from medseg.models.backbones import xception as _xception  # noqa: F401
from medseg.models.backbones import xception39 as _xception39  # noqa: F401
from medseg.models.backbones.base import Backbone
from medseg.models.backbones.pretrained import LoadReport, load_pretrained
from medseg.models.backbones.registry import (
    BackboneInfo,
    backbone_parameter_count,
    create_backbone,
    get_backbone_info,
    list_backbones,
)

__all__ = [
    "Backbone",
    "BackboneInfo",
    "LoadReport",
    "backbone_parameter_count",
    "create_backbone",
    "get_backbone_info",
    "list_backbones",
    "load_pretrained",
]
