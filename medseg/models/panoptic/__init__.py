"""Panoptic segmentation networks (family ``panoptic``): every object with its class, from one network.

The datasets here hold objects of "thing" classes (each voxel background or one object); the panoptic networks'
semantic branches predict those classes. One import line per architecture below.
"""

from medseg.models.panoptic import deeperlab as _deeperlab  # noqa: F401
from medseg.models.panoptic import efficientps as _efficientps  # noqa: F401
from medseg.models.panoptic import panoptic_deeplab as _panoptic_deeplab  # noqa: F401
from medseg.models.panoptic import panoptic_fpn as _panoptic_fpn  # noqa: F401
from medseg.models.panoptic import upsnet as _upsnet  # noqa: F401
