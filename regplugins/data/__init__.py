"""Synthetic multi-modal data with known deformations, and the demo pair built from real anatomy."""

from .cache import cached_pairs
from .write import head_label_names, load_atlas, write_atlas, write_clinical_pair, write_synthetic_set
from .synth import INTENSITY_RANGES, TISSUES, SynthesizePaird, SyntheticPairGenerator, grid_affine, synthesize_image
