"""Synthesise a bundle's training and validation pairs into its on-disk cache (`--cache_dir`) once,
so that several training runs of the same setting can share them. With a GPU the pairs are made
on it (`synthesis_device`), one after another; without one, on every CPU core.

    python experiments/fill_pair_cache.py BUNDLE_DIR CACHE_DIR '{"num_train_pairs": 192, ...}'
"""

import json
import os
import sys
import time

import torch
from monai.bundle import ConfigParser


def fill_pair_cache(bundle: str, cache_dir: str, overrides: dict) -> None:
    parser = ConfigParser()
    parser.read_config(f"{bundle}/configs/train.json")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.update({"bundle_root": bundle, "cache_dir": cache_dir, "synthesis_device": device, **overrides})
    workers = 0 if parser["synthesis_device"] != "cpu" else os.cpu_count()
    start = time.time()
    for name in ("train#dataset", "validate#dataset"):
        dataset = parser.get_parsed_content(name)
        loader = torch.utils.data.DataLoader(dataset, num_workers=workers, collate_fn=len)
        sum(loader)
        print(f"{bundle} {name}: {len(dataset)} pairs cached in {time.time() - start:.0f} s on {parser['synthesis_device']}", flush=True)


if __name__ == "__main__":
    fill_pair_cache(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
