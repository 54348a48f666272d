"""Pieces of ignite engines for registration."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.metrics import RMSEMetric
from monai.utils.enums import CommonKeys as Keys

from regplugins.data.pairs import PAIR_ERROR, one_line_error
from regplugins.io import as_given

logger = logging.getLogger(__name__)


def prepare_registration_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """``(inputs, targets)`` for unsupervised registration: the concatenated pair is both.

    The loss compares the moving channel warped by the predicted fields with the fixed channel,
    so the pair itself is the target; pass this as ``prepare_batch`` of MONAI's trainers.
    """
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, image


def prepare_labelled_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """``(inputs, targets)`` for registration trained with labels: the pair, and its ``moving_label`` and ``fixed_label``.

    For losses with a label term (:class:`regplugins.losses.FIRELoss` with ``label_weight``); the
    losses that compare the images alone find them in the outputs.
    """
    image, _ = prepare_registration_batch(batchdata, device, non_blocking, **kwargs)
    labels = {key: batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs) for key in ("moving_label", "fixed_label")}
    return image, labels


def prepare_paired_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """``(inputs, targets)`` for training on paired data (:class:`regplugins.losses.IntraModalitySimilarityLoss`).

    ``image`` holds four channels: moving, fixed, the moving anatomy in the fixed modality and
    the fixed anatomy in the moving modality. The network sees the first two; the loss gets all
    four with ``fixed_is_ct``, from the batch's ``fixed_modality`` names, which says which of its
    terms is the CT one.
    """
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    fixed_is_ct = torch.tensor([str(name).lower() == "ct" for name in batchdata["fixed_modality"]], device=device)
    return image[:, :2], {"images": image, "fixed_is_ct": fixed_is_ct}


class CyclicOptimizerUpdate:
    """Ignite iteration update that steps one optimiser per iteration, in turn: FIRE's training schedule.

    FIRE updates its affine sub-networks, its non-rigid sub-networks and the rest with three Adam
    optimisers "in each three consecutive iterations for a stable convergence". Iteration ``k`` of
    the engine computes the loss as :class:`monai.engines.SupervisedTrainer` does, clears every
    optimiser's gradients and steps ``optimizers[(k - 1) % len(optimizers)]`` only, so each
    parameter group changes in its own iteration. Pass it as the trainer's ``iteration_update``;
    it fires the trainer's iteration events, so MONAI's handlers work as usual.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("CyclicOptimizerUpdate needs at least one optimiser.")
        self.optimizers = list(optimizers)

    def current(self, iteration: int) -> torch.optim.Optimizer:
        """The optimiser that steps in (1-based) ``iteration``."""
        return self.optimizers[(iteration - 1) % len(self.optimizers)]

    def __call__(self, engine, batchdata: dict) -> dict:
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        engine.state.output[Keys.PRED] = engine.inferer(inputs, engine.network)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = engine.loss_function(engine.state.output[Keys.PRED], targets).mean()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.state.output[Keys.LOSS].backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self.current(engine.state.iteration).step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


@torch.no_grad()
def _features_and_targets(network: torch.nn.Module, dataset, device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    features, targets = zip(*((network.features(batch["image"].to(device)).cpu(), batch["label"]) for batch in loader))
    return torch.cat(features), torch.cat(targets).float()


def fit_feature_ann(network: torch.nn.Module, ckpt_path: str, train_dataset, val_dataset, device, epochs: int = 300, batch_size: int = 8) -> dict:
    """The rigid bundle's second training stage: the Bayesian-regularised ANN on the trained CNN's frozen features.

    Loads the CNN (:class:`regplugins.networks.RigidRegressionCNN`) trained by ``train.json``
    from ``ckpt_path``, fits ``network.ann`` on the features of ``train_dataset`` (items with the
    pair under ``image`` and the six parameters under ``label``), and saves the whole network back
    to ``ckpt_path``, so one checkpoint serves both heads. Returns and prints the fit's history
    and the validation RMSE of both heads and of the identity (over the six parameters of each pair, degrees and mm
    together, averaged over pairs: the key metric of ``train.json``).
    """
    network.load_state_dict(torch.load(ckpt_path, map_location=device))
    network.eval()
    features, targets = _features_and_targets(network, train_dataset, device, batch_size)
    history = network.ann.fit(features.cpu(), targets.cpu(), epochs=epochs)
    network.ann.to(device)
    val_features, val_targets = _features_and_targets(network, val_dataset, device, batch_size)
    with torch.no_grad():
        predictions = {head: layer(val_features.to(device)).cpu() for head, layer in (("regression", network.regression), ("ann", network.ann))}
    predictions["identity"] = torch.zeros_like(val_targets)  # the baseline both heads must beat
    rmse = {head: RMSEMetric()(predicted, val_targets).mean().item() for head, predicted in predictions.items()}
    torch.save(network.state_dict(), ckpt_path)
    summary = {
        "train_samples": len(targets),
        "epochs": len(history["sse"]),
        "stop": history["stop"],
        "gamma": history["gamma"][-1:],
        "val_rmse": rmse,
    }
    print(summary)
    return summary


class PairsFailed(SystemExit):
    """The end of a run in which some pairs failed: ``error: ...`` on stderr and exit status 1, no traceback.

    ``errors`` holds each failed pair's one-line error.
    """

    def __init__(self, errors: Sequence[str], total: int, summary_file: Path | None):
        self.errors = list(errors)
        where = f"; see {summary_file}" if summary_file else ""
        first = self.errors[0] if len(self.errors) == 1 else f"{len(self.errors)} of {total} pairs failed{where}; the first: {self.errors[0]}"
        super().__init__(f"error: {first}")


def _source(value) -> str:
    """The file a batch item came from, as the user gave it: a loaded image's ``filename_or_obj``, or the path itself."""
    source = value.meta["filename_or_obj"] if hasattr(value, "meta") else value
    return as_given(str(source[0] if isinstance(source, (list, tuple)) else source))


class PairEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` for a cohort of registration pairs: one failing pair does not stop the rest.

    A pair whose loading (:class:`regplugins.data.PairDataset`), network or postprocessing
    (saving included) raises is logged as ``error: <file>: <problem>`` and skipped. At the end,
    ``summary_dir/summary.json`` lists every pair of the run (``done`` with its output folder, or
    ``failed`` with its error, and the seconds it took, its loading included), gathered from every rank under
    ``torchrun``; then, if any pair failed, :class:`PairsFailed` ends the process with status 1.
    """

    def __init__(self, *args, summary_dir: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.summary_dir = Path(summary_dir) if summary_dir else None
        self.pair_records: list[dict] = []
        self.pair_started = time.perf_counter()
        # the clock starts before the data loader loads (and pre-aligns) the pair
        self.add_event_handler(Events.GET_BATCH_STARTED, lambda engine: setattr(self, "pair_started", time.perf_counter()))

    def _iteration(self, engine, batchdata: dict) -> dict:
        record = {"fixed": _source(batchdata["fixed"]), "moving": _source(batchdata["moving"])}
        start, output = self.pair_started, {}
        if PAIR_ERROR in batchdata:
            record.update(status="failed", error=batchdata[PAIR_ERROR][0])
        else:
            try:
                output = super()._iteration(engine, batchdata)
                folder = engine.state.output[0].get("output_folder") if isinstance(engine.state.output, list) else None
                record.update(status="done", output=folder)
            except Exception as error:  # whatever a pair raises, the others go on; the summary and exit status tell
                record.update(status="failed", error=one_line_error(error, record["moving"]))
        record["seconds"] = round(time.perf_counter() - start, 2)
        if record["status"] == "failed":
            record["error"] = as_given(record["error"])  # the user's files, not their NIfTI copies
            logger.error(f"error: {record['error']}")
        self.pair_records.append(record)
        return output

    def run(self) -> None:
        self.pair_records = []
        super().run()
        records = self.pair_records
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shares = [None] * dist.get_world_size()
            dist.all_gather_object(shares, records)
            records = [record for share in shares for record in share]
        summary_file = None
        if self.summary_dir is not None:
            summary_file = self.summary_dir / "summary.json"
            if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
                summary = {status: sum(r["status"] == status for r in records) for status in ("done", "failed")}
                self.summary_dir.mkdir(parents=True, exist_ok=True)
                summary_file.write_text(json.dumps({**summary, "pairs": records}, indent=2))
        errors = [record["error"] for record in records if record["status"] == "failed"]
        if errors:
            raise PairsFailed(errors, len(records), summary_file)
