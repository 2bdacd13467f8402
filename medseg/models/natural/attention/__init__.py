"""Natural-image architectures, attention group: importing a module registers its models."""

from medseg.models.natural.attention import ccnet as _ccnet  # noqa: F401
from medseg.models.natural.attention import cpnet as _cpnet  # noqa: F401
from medseg.models.natural.attention import danet as _danet  # noqa: F401
from medseg.models.natural.attention import denseaspp as _denseaspp  # noqa: F401
from medseg.models.natural.attention import gscnn as _gscnn  # noqa: F401
from medseg.models.natural.attention import linknet as _linknet  # noqa: F401
from medseg.models.natural.attention import pac as _pac  # noqa: F401
from medseg.models.natural.attention import psanet as _psanet  # noqa: F401
