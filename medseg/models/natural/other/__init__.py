"""Natural-image architectures, other group: importing a module registers its models."""

from medseg.models.natural.other import auto_deeplab as _auto_deeplab  # noqa: F401
from medseg.models.natural.other import banet as _banet  # noqa: F401
from medseg.models.natural.other import multinet as _multinet  # noqa: F401
from medseg.models.natural.other import multipath_net as _multipath_net  # noqa: F401
from medseg.models.natural.other import pixeldcn as _pixeldcn  # noqa: F401
from medseg.models.natural.other import seg_aware_conv as _seg_aware_conv  # noqa: F401
