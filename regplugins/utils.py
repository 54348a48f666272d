"""Small helpers that every layer of the package uses: reading a yes/no setting as the command lines hand it over."""

from __future__ import annotations

__all__ = ["as_flag"]


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
