"""The registration networks of the papers; MONAI's own (VoxelMorph, LocalNet, ...) are used from ``monai.networks``."""

from .bayesian_ann import BayesianRegularizedANN
from .fcn_multires import MultiResolutionFCN
from .fire import FIRENet
from .gradient_fusion import GradientFusionNet
from .patch_unet import PatchRegistrationUNet
from .rigid_cnn import ModalityClassifierCNN, RigidRegressionCNN
