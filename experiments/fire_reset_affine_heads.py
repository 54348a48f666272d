"""FIRE weights with their affine heads reset to the identity, for training on pre-aligned pairs.

The 0.4.1 weights' affine heads were trained on unaligned pairs; on pre-aligned ones they add an affine
of their own that leaves the pair less similar than the pre-alignment, and training on both kinds of
pair at once did not undo that (FIRE's training record). Reset, the network starts where the
pre-alignment left the pair, and its training learns the residual.

    python experiments/fire_reset_affine_heads.py IN.pt OUT.pt
"""

import sys

import torch
from monai.bundle import ConfigParser

from regplugins.networks.fire import AffineNetwork


def reset_affine_heads(source: str, target: str, bundle: str = "bundles/fire_inverse_consistent_reg") -> None:
    parser = ConfigParser()
    parser.read_config(f"{bundle}/configs/train.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(source, map_location="cpu"))
    for module in network.modules():
        if isinstance(module, AffineNetwork):
            module.reset_to_identity()
    torch.save(network.state_dict(), target)


if __name__ == "__main__":
    reset_affine_heads(sys.argv[1], sys.argv[2])
