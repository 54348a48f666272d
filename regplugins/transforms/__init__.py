"""Dictionary transforms for registration that MONAI lacks; MONAI's own are used from ``monai.transforms``."""

from .intensity import GradientMagnituded, NormalizeModalityd, looks_like_ct
from .io import SaveRegistrationd, register_on_native_grids, warp_native_images, write_registration_outputs
from .spatial import AffineAlignd, AntiAliasd, ComposeAffined, InvertDisplacementd, RefineDisplacementd, Warpd
from .rigid import OrderByModalityd, RandHeadScaled, RandRigidMotiond, RefineRigidd, SaveRigidRegistrationd, modality_path
