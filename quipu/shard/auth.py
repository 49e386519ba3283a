"""Who is calling: bearer tokens looked up by their SHA-256, the role and tenant each
carries, and the per-token cap on concurrent queries.

The config names tokens by digest (`sha256:<hex>`), never by value, so the config file is
not a credential: reading it does not let anyone call the shard. Everything here that
may reach a log or an error names a token by its `token_id` (`tok-` + 12 hex digits of
the digest) or the first 8 hex digits of its digest, never by the token itself.
"""

import contextlib
import hashlib
import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from quipu.core.errors import BadInput, TooManyQueries, Unauthenticated
from quipu.core.event import validate_tenant
from quipu.shard.config_fields import Fields, type_name
from quipu.shard.permissions import Action, PermissionPolicy

DIGEST_PREFIX = "sha256:"
TOKEN_PREFIX = "qp_"  # marks a quipu token, so a secret scanner can recognise a leaked one
ANY_TENANT = "*"
DEFAULT_MAX_CONCURRENT_QUERIES = 4
# One message for every failure (no header, wrong scheme, unknown, expired): a caller
# probing tokens learns nothing about which of its guesses came close.
INVALID_TOKEN = "missing or invalid bearer token"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PLAIN_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: all a bearer header can carry
# Plain names: no ":" keeps the shard's internal role ("quipu:system") out of any config.
_ROLE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
_BAD_EXPIRES = "not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z) or a number of unix seconds"


@dataclass(frozen=True)
class Principal:
    """The caller a valid token stands for."""

    role: str
    token_id: str  # "tok-" + 12 hex of the token's sha256: safe to log and to audit
    tenant: str | None  # bound tenant, "*" for cluster-wide, None when the config names none
    expires: float | None  # unix seconds


def token_digest(token: str) -> str:
    """The `sha256:<hex>` form of a token: what the config stores in its place."""
    return DIGEST_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh token: 256 bits from the OS CSPRNG, URL-safe, with the `qp_` prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_id(digest: str) -> str:
    """The loggable name of a token, from its `sha256:<hex>` digest."""
    return "tok-" + digest[len(DIGEST_PREFIX) : len(DIGEST_PREFIX) + 12]


class TokenTable:
    """Token digest -> Principal: one dict lookup per request, whatever the table's size."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self._by_digest = dict(principals)

    @classmethod
    def from_json(cls, obj: object, where: str = "auth.tokens") -> tuple["TokenTable", list[str]]:
        """`{"sha256:<hex>": "role" | {role, expires, tenant}}` -> (table, warnings).

        A plain-text key is accepted (hashed on load, so the table never holds it) with a
        warning, because then the config file itself is a credential.
        """
        if obj is None:
            obj = {}
        if not isinstance(obj, Mapping):
            raise BadInput(f"{where}: expected an object of sha256:<hex> -> role, got {type_name(obj)}")
        principals: dict[str, Principal] = {}
        plain: list[str] = []
        for key, value in obj.items():
            digest, label, is_plain = _parse_key(key, where)
            if is_plain:
                plain.append(token_id(digest))
            if digest in principals:
                raise BadInput(
                    f"{where}.{label}: the same token is listed twice (plain and as its sha256: "
                    "form, or its digest in two letter cases); keep one sha256: entry"
                )
            principals[digest] = _principal(value, digest, f"{where}.{label}")
        warnings = []
        if plain:
            count = "1 token is" if len(plain) == 1 else f"{len(plain)} tokens are"
            warnings.append(
                f"{where}: {count} stored in plain text ({', '.join(plain)}), so the config "
                "file is a credential; replace each with its sha256: form (see docs/config.md)"
            )
        return cls(principals), warnings

    def authenticate(self, authorization: str | None, now: float) -> Principal:
        """The principal for an `Authorization: Bearer <token>` header value, or
        Unauthenticated (always the same message) when there is none."""
        parts = authorization.split() if authorization else []
        if len(parts) != 2 or parts[0].lower() != "bearer":  # auth schemes are case-insensitive
            raise Unauthenticated(INVALID_TOKEN)
        # Undecodable header bytes arrive surrogate-escaped and cannot be UTF-8 encoded: no
        # token we issued. Checked, not caught, so no exception context keeps the value.
        token = parts[1]
        if not token.isascii() and any("\ud800" <= c <= "\udfff" for c in token):
            raise Unauthenticated(INVALID_TOKEN)
        digest = token_digest(token)
        # A plain dict lookup, not hmac.compare_digest: the key is the SHA-256 of the
        # presented token, so whatever the lookup's timing leaks is about a hash the
        # attacker computed itself; learning a stored digest from it would still leave a
        # preimage to find, which is as hard as guessing the 256-bit token.
        principal = self._by_digest.get(digest)
        if principal is None or (principal.expires is not None and now >= principal.expires):
            raise Unauthenticated(INVALID_TOKEN)
        return principal

    def with_principal(self, digest: str, principal: Principal) -> "TokenTable":
        """This table plus one principal that no config file can name (the cluster's own)."""
        return TokenTable({**self._by_digest, digest: principal})

    def role_counts(self) -> dict[str, int]:
        """How many tokens carry each role (for config warnings and status output)."""
        return dict(Counter(p.role for p in self._by_digest.values()))

    def __len__(self) -> int:
        return len(self._by_digest)

    def __repr__(self) -> str:
        return f"TokenTable({len(self)} tokens)"


def _parse_key(key: object, where: str) -> tuple[str, str, bool]:
    """(digest, label, is_plain): the label names the entry in messages without revealing
    a token."""
    if isinstance(key, str) and key[: len(DIGEST_PREFIX)].lower() == DIGEST_PREFIX:
        digest = key.lower()
        if not _DIGEST.fullmatch(digest):
            raise BadInput(
                f"{where}: a key starting with sha256: must continue with exactly 64 hex digits "
                "(the key is not shown); compute it with token_digest (see docs/config.md)"
            )
        return digest, f'"{digest[: len(DIGEST_PREFIX) + 8]}.."', False
    if not isinstance(key, str) or not _PLAIN_TOKEN.fullmatch(key):
        raise BadInput(
            f"{where}: a token key must be sha256:<64 hex digits> (or a plain token of visible "
            "ASCII without spaces); one key is neither (it is not shown)"
        )
    digest = token_digest(key)
    return digest, f"<plain token {token_id(digest)}>", True


def _principal(value: object, digest: str, where: str) -> Principal:
    if isinstance(value, str):
        return Principal(_role(value, where), token_id(digest), None, None)
    if not isinstance(value, Mapping):
        raise BadInput(f"{where}: expected a role name or {{role, expires, tenant}}, got {type_name(value)}")
    fields = Fields(value, where, ("role", "expires", "tenant"))
    tenant = fields.optional_text("tenant")
    if tenant is not None and tenant != ANY_TENANT:
        validate_tenant(tenant, fields.path("tenant"))
    role = _role(fields.text("role"), fields.path("role"))
    return Principal(role, token_id(digest), tenant, _expires(fields.raw("expires"), fields.path("expires")))


def _role(role: object, where: str) -> str:
    if not isinstance(role, str) or not _ROLE.fullmatch(role):
        raise BadInput(f"{where}: a role name is 1-64 characters of A-Z a-z 0-9 _ . - (not shown)")
    if role.startswith(TOKEN_PREFIX):  # a token pasted in the wrong place: never echo it
        raise BadInput(f"{where}: this role looks like a token ({TOKEN_PREFIX}...); name a role from grants")
    return role


def _expires(value: object, where: str) -> float | None:
    """RFC 3339 text, unix seconds, or (YAML reads an unquoted time itself) a datetime."""
    if value is None:
        return None
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        with contextlib.suppress(ValueError):  # well-formed but impossible, e.g. month 13
            value = datetime.fromisoformat(value.upper().replace(" ", "T"))
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    raise BadInput(f"{where}: {_BAD_EXPIRES}")


@dataclass(frozen=True)
class AuthConfig:
    """The `auth` section: swapped whole on SIGHUP, so a request sees one version of it."""

    tokens: TokenTable
    policy: PermissionPolicy
    max_concurrent_queries: int | None
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: object, where: str = "auth") -> "AuthConfig":
        """Absent or empty means no tokens: every call but the health check is refused."""
        fields = Fields(obj, where, ("tokens", "grants", "max_concurrent_queries"))
        tokens, warnings = TokenTable.from_json(fields.raw("tokens"), fields.path("tokens"))
        grants = fields.raw("grants")
        if isinstance(grants, Mapping):
            for role in grants:
                _role(role, fields.path("grants"))
        policy = PermissionPolicy.from_json({} if grants is None else grants, fields.path("grants"))
        limit = fields.optional_integer("max_concurrent_queries", DEFAULT_MAX_CONCURRENT_QUERIES)
        for role, count in sorted(tokens.role_counts().items()):
            if not any(policy.is_allowed(role, action) for action in Action):
                warnings.append(
                    f"{fields.path('tokens')}: {count} token(s) carry role {role!r}, which "
                    f"{fields.path('grants')} grants nothing, so they are denied every call"
                )
        return cls(tokens, policy, limit, tuple(warnings))


class QueryLimiter:
    """At most `limit` concurrent queries per token; one more is refused at once (429).

    Refusing instead of queueing keeps a slow full scan from piling up waiting handlers.
    The lock guards a dict update only, so taking it from an event loop never stalls it.
    """

    def __init__(self, limit: int | None) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self.limit = limit

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, limit: int | None) -> None:
        # A lowered limit refuses new queries until enough running ones finish; it never
        # cancels a running one. Counting goes on when unlimited, so a later limit is exact.
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise BadInput("max_concurrent_queries must be a positive integer or null (unlimited)")
        self._limit = limit

    @contextlib.contextmanager
    def slot(self, token_id: str) -> Iterator[None]:
        """Hold one query slot of this token for the `with` block; TooManyQueries on entry
        when the token already holds `limit` of them."""
        with self._lock:
            running = self._running.get(token_id, 0)
            if self._limit is not None and running >= self._limit:
                raise TooManyQueries(f"this token already runs {running} queries; retry when one finishes")
            self._running[token_id] = running + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._running[token_id] - 1
                if left:
                    self._running[token_id] = left
                else:
                    del self._running[token_id]  # no entry per token ever seen: bounded memory

    def running(self, token_id: str) -> int:
        """How many queries this token runs now."""
        with self._lock:
            return self._running.get(token_id, 0)
