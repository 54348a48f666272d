"""The inference configs' dataset: a pair that fails to load becomes a record of its error, not the end of the run."""

from __future__ import annotations

from monai.data import Dataset

__all__ = ["PAIR_ERROR", "PairDataset", "one_line_error"]

# the key of a failed pair's record, beside its fixed and moving paths
PAIR_ERROR = "pair_error"


def one_line_error(error: BaseException, moving: str) -> str:
    """``<file>: <problem>`` for ``error``, from the innermost cause of MONAI's chained transform errors.

    Our input errors name their file already; any other names ``moving``, the pair's moving image.
    """
    from regplugins.io import RegistrationInputError

    cause, seen = error, {id(error)}
    # MONAI re-raises a transform's error from itself, so the chain can loop back: stop where it does
    while (following := cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)) is not None and id(following) not in seen:
        cause = following
        seen.add(id(cause))
    if isinstance(cause, RegistrationInputError):
        return str(cause).splitlines()[0]
    problem = (str(cause).strip().splitlines() or [""])[0]
    return f"{moving}: {type(cause).__name__}: {problem}" if problem else f"{moving}: {type(cause).__name__}"


class PairDataset(Dataset):
    """MONAI's ``Dataset`` over registration pairs, for a cohort of them.

    When an item's transform raises (an image truncated on disk, memory), the item is
    ``{"fixed", "moving", PAIR_ERROR}`` with the one-line error instead, so that the data loader
    goes on to the next pair; :class:`regplugins.engines.PairEvaluator` reports it and skips it.
    """

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as error:  # a transform may raise anything; the run reports it and goes on
            pair = self.data[index]
            return {"fixed": str(pair["fixed"]), "moving": str(pair["moving"]), PAIR_ERROR: one_line_error(error, str(pair["moving"]))}
