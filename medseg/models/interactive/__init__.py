"""Interactive segmentation networks (family ``interactive``): the object a user marks with points.

One import line per architecture below.
"""

from medseg.models.interactive import dextr as _dextr  # noqa: F401
