"""One error hierarchy for the engine, split by what the caller can do about it.

A detected tamper is not an error: `verify_integrity()` returns it as a result. Errors here
are for calls that cannot proceed. Messages say what happened and what to do next and never
carry a secret or a query value.
"""


class QuipuError(Exception):
    """Root of every error Quipu raises on purpose."""


class BadInput(QuipuError):
    """The caller passed something invalid; fix the input and call again."""


class NotFound(QuipuError):
    """The named thing does not exist (or no longer exists after retention)."""


class Conflict(QuipuError):
    """The call clashes with the current state (e.g. a closed store)."""


class StoreLocked(QuipuError):
    """Another process holds the store directory; stop it or open another directory."""

    def __init__(self, root: str, holder_pid: int | None) -> None:
        who = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"store {root} is locked by {who}; a store is held by one process at a time: "
            "stop that process or open a different store directory"
        )
        self.holder_pid = holder_pid


class Unauthenticated(QuipuError):
    """No valid credential (missing, unknown or expired token). Deliberately says no more."""


class Forbidden(QuipuError):
    """The caller is known but not granted this action (or this tenant)."""


class Overloaded(QuipuError):
    """A bounded resource is full (the write queue); retry after a backoff."""


class TooManyQueries(QuipuError):
    """This caller already runs its maximum of concurrent queries; retry when one ends."""


class StorageFull(QuipuError):
    """The disk is full (ENOSPC); free space, then retry."""


class CorruptStore(QuipuError):
    """On-disk data cannot be read as its documented format; run verify_integrity()."""


class UnsupportedFormat(CorruptStore):
    """A file carries a magic or format version this release does not read."""


class ProofError(QuipuError):
    """A Merkle proof does not verify against the given root(s)."""
