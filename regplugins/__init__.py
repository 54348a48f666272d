"""Plugin package of the registration MONAI bundles: what MONAI lacks, reached from configs by full dotted path."""

from . import alignment, data, engines, inferers, io, layers, losses, metrics, networks, optimizers, transforms

__version__ = "0.30.3"
