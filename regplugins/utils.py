"""Small helpers that every layer of the package uses: reading a yes/no setting as the command lines hand it over,
and the old name of a renamed setting."""

from __future__ import annotations

import warnings

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


def renamed_setting(old_name: str, old_value, new_name: str, new_value):
    """The value of a config key renamed to MONAI's spelling: the old key's while a user still sets it, with a warning.

    A bundle config keeps the old key at ``null`` for one release and reads the setting
    through this, so that ``--optimise_iterations 5`` still works and says what to write instead.
    """
    if old_value is None:
        return new_value
    warnings.warn(f"{old_name} is renamed {new_name}; the old name stops working in regplugins 0.6.0.", FutureWarning, stacklevel=2)
    return old_value
