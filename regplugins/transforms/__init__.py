"""Dictionary transforms for registration that MONAI lacks; MONAI's own are used from ``monai.transforms``."""

from .intensity import GradientMagnituded, NormalizeModalityd, looks_like_ct
from .io import SaveRegistrationd
from .rigid import OrderByModalityd, RandHeadScaled, RandRigidMotiond, RefineRigidd, SaveRigidRegistrationd, modality_path
from .spatial import (
    AffineAlignd,
    AntiAliasd,
    ComposeAffined,
    CropHeadd,
    InvertDisplacementd,
    RefineDisplacementd,
    Warpd,
    label_overlap_postprocessing,
    native_image,
)
