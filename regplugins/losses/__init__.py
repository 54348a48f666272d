"""Registration losses that MONAI lacks. MONAI's own (LNCC, mutual information, bending energy,
diffusion) are used from ``monai.losses`` directly."""

from .fire import FIRELoss
from .gradient_fusion import GradientFusionLoss
from .inverse_consistency import InverseConsistencyLoss
from .mind import MINDDescriptor, MINDLoss
from .multiresolution import MultiResolutionRegistrationLoss
from .mutual_information import ParzenMutualInformationLoss
from .ncc import GlobalNCCLoss
from .paired import IntraModalitySimilarityLoss
from .regularization import LaplacianRegularizationLoss, TotalVariationLoss, laplacian
