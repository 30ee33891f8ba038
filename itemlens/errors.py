"""Exceptions shared by the extractors, the store and the workflows.

Each subclasses a builtin as well (ValueError, KeyError, ...) so callers can catch
either the itemlens type or the usual Python one. Messages say what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence


class ItemlensError(Exception):
    """Base class of every error itemlens raises on purpose."""


class ConfigError(ItemlensError, ValueError):
    """The configuration is invalid; raised before any work starts."""


class CatalogError(ItemlensError, ValueError):
    """The catalog as a whole cannot be used (missing id column, duplicate ids, ...)."""


class InputError(ItemlensError, ValueError):
    """Values handed to the client that cannot be stored (missing or repeated ids, vectors of
    the wrong shape, NaN or infinite values)."""


class LocationError(ItemlensError, ValueError):
    """A path or URI that cannot be used as given (credentials in it, a file: URI naming another
    host, ...); the message says why, without repeating any secret."""


class MissingDependencyError(ItemlensError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class WeightsNotFoundError(ItemlensError, FileNotFoundError):
    """Model weights could not be found; the message says where it looked.

    itemlens never falls back to randomly initialised weights.
    """


class StoreError(ItemlensError, RuntimeError):
    """Something is wrong with the store itself."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """There is no itemlens store at the given URI."""


class StoreFormatError(StoreError):
    """The store was written in a format this version of itemlens does not know."""


class StoreLockedError(StoreError, TimeoutError):
    """Another writer holds the store's writer lock."""


class SnapshotNotFoundError(StoreError, LookupError):
    """The requested snapshot does not exist (or has been pruned)."""


class UnknownFeatureError(StoreError, LookupError):
    """The store has no feature (or feature version) of that name in this snapshot."""


class QueryError(ItemlensError, ValueError):
    """A raw query (text or image for ``search``/``encode``) cannot be used."""


class UnknownItemsError(ItemlensError, KeyError):
    """Some requested item ids (or, from ``vectors_at``, item indexes) have no value in this snapshot.

    ``missing`` holds all of them; the message names the first few.
    """

    def __init__(
        self,
        feature: str,
        missing: Sequence[str | int],
        *,
        detail: str = "",
        what: str = "id(s)",
        noun: str = "vector",
        takes_fill: bool = True,
    ):
        self.feature = feature
        self.missing = list(missing)
        shown = ", ".join(repr(m) for m in self.missing[:5])
        more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
        msg = f"{len(self.missing)} {what} have no {feature!r} {noun} in this snapshot: {shown}{more}"
        if detail:
            msg += f" ({detail})"
        if takes_fill:  # only where the call has a fill argument
            msg += "; pass fill=... to get a fill value instead"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]
