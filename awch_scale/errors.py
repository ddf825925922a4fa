"""User-facing errors: the CLI prints them as one paragraph and exits with code 2."""

from __future__ import annotations


class AwchError(Exception):
    """Base class for errors caused by user input (recipe, data, target layer).

    The CLI prints ``str(err)`` without a traceback and exits with status 2.
    """


class RecipeError(AwchError):
    """The recipe file is unreadable or does not satisfy the schema."""


class DataError(AwchError):
    """A data set cannot be loaded (missing root, unknown classes, too few samples)."""


class TargetError(AwchError):
    """The requested target layer does not exist or is not usable."""


class ConvergenceError(AwchError):
    """The eigensolver did not converge within its iteration budget."""


class NonFiniteError(AwchError):
    """An operator product or statistic came out NaN or infinite."""


class SettingsError(AwchError, ValueError):
    """Settings that cannot work with this data or target (the message names the key)."""


class UnknownSettingError(SettingsError, TypeError):
    """A keyword that is no setting: a SettingsError, and a TypeError as Python raises for
    an unexpected keyword argument (``except TypeError`` keeps working)."""


class CheckpointError(AwchError):
    """A checkpoint is missing, was replaced or modified, or cannot be loaded safely."""


class StoreError(AwchError):
    """A path given as a result store is not one that can be read: no store there
    (:class:`NoStoreError`), a zarr group awch-scale did not make (:class:`ForeignStoreError`),
    or a store whose metadata or arrays are damaged (:class:`DamagedStoreError`)."""


class NoStoreError(StoreError):
    """No awch-scale store (no ``zarr.json``) at the path."""


class ForeignStoreError(StoreError):
    """A zarr group that awch-scale did not make (it has no ``recipe`` attribute)."""


class DamagedStoreError(StoreError):
    """The store's group metadata is unreadable or some of its arrays are missing; the
    message names ``awch-scale verify``."""
