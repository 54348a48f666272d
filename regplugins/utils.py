"""Small helpers that every layer of the package uses: reading a yes/no setting as the command lines hand it over,
and the old name of a renamed setting."""

from __future__ import annotations

__all__ = ["as_flag", "renamed_setting"]


def as_flag(value, name: str) -> bool:
    """A yes/no setting as a bool, whether a config holds it or the command line gave it.

    ``monai.bundle run`` reads its overrides with Python fire, which turns ``--x False`` into a
    bool but ``--x false`` into the string ``"false"``, and a string is true: the setting would
    silently flip on. Both spellings mean what they say here; anything else is an error.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def prealign_finish(value, refine_iterations) -> bool:
    """The ``prealign_finish`` setting: ``true``, ``false``, or ``"auto"``, which finishes only when no refinement follows.

    The finish (:func:`~regplugins.alignment.finish_affine`) raised the networks' feed-forward
    Dice by about 0.02 on the bench's MNI152 kinds; under the refinement it gained at most 0.002
    (FIRE), lowered CT/T1 pairs by up to 0.009 (the other bundles) and cost about a second a pair
    (docs/benchmarks.md).
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return refine_iterations == 0
    return as_flag(value, "prealign_finish")


def renamed_setting(old_name: str, old_value, new_name: str, new_value):
    """The value of a config key renamed to MONAI's spelling; its old key, still set, stops the run with one line.

    A bundle config keeps the old key at ``null`` and reads the setting through this, so that
    ``--optimise_iterations 5`` is not silently ignored but names what to write instead
    (regplugins 0.5.0 still read it, with a warning).
    """
    if old_value is not None:
        raise SystemExit(f"error: {old_name}: renamed {new_name} in regplugins 0.5.0; write --{new_name} {old_value}.")
    return new_value
