"""Synthetic multi-modal data with known deformations, the training sets made of it, and the demo pair from real anatomy."""

from .pairs import PairDataset
from .synth import INTENSITY_RANGES, TISSUES, SynthesizePaird, SyntheticPairGenerator, grid_affine, synthesize_image
from .training import augmented_pairs, cached_pairs, ct_mr_pairs, synthetic_pairs, user_pairs
from .write import head_label_names, load_atlas, write_atlas, write_clinical_pair, write_synthetic_set
