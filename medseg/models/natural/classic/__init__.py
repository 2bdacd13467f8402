"""Natural-image architectures, classic group: importing a module registers its models."""

from medseg.models.natural.classic import deconvnet as _deconvnet  # noqa: F401
from medseg.models.natural.classic import deeplab_v1 as _deeplab_v1  # noqa: F401
from medseg.models.natural.classic import deeplab_v2 as _deeplab_v2  # noqa: F401
from medseg.models.natural.classic import deeplabv3 as _deeplabv3  # noqa: F401
from medseg.models.natural.classic import deeplabv3plus as _deeplabv3plus  # noqa: F401
from medseg.models.natural.classic import dilated_context as _dilated_context  # noqa: F401
from medseg.models.natural.classic import fcn as _fcn  # noqa: F401
from medseg.models.natural.classic import parsenet as _parsenet  # noqa: F401
from medseg.models.natural.classic import pspnet as _pspnet  # noqa: F401
from medseg.models.natural.classic import segnet as _segnet  # noqa: F401
