"""Bearer tokens, their principals, the auth section and the per-token query limiter."""

import asyncio
import hashlib
import threading

import pytest

from quipu.core.errors import BadInput, TooManyQueries, Unauthenticated
from quipu.shard.auth import (
    INVALID_TOKEN,
    AuthConfig,
    Principal,
    QueryLimiter,
    TokenTable,
    new_token,
    token_digest,
)
from quipu.shard.permissions import Action

ADMIN, AUDITOR, PLAIN = new_token(), new_token(), new_token()
NOW = 1_700_000_000.0
WAIT = 60  # seconds: only a hang reaches it; no test relies on timing


def table(obj: object) -> TokenTable:
    return TokenTable.from_json(obj)[0]


def digest_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- digests and tokens ----------------------------------------------------------------


def test_token_digest_is_sha256_of_the_utf8_token():
    # printf abc | sha256sum
    assert token_digest("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_new_tokens_are_prefixed_urlsafe_and_distinct():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("qp_") and len(t) == 46 and t.isascii() and " " not in t for t in tokens)


# --- authenticate -----------------------------------------------------------------------


def test_bearer_token_authenticates_to_its_principal():
    principal = table({token_digest(ADMIN): "admin"}).authenticate(f"Bearer {ADMIN}", NOW)
    assert principal == Principal("admin", "tok-" + digest_hex(ADMIN)[:12], None, None)


@pytest.mark.parametrize("header", ["bearer {t}", "BEARER {t}", "Bearer  {t} ", "\tBearer {t}"])
def test_scheme_is_case_insensitive_and_spacing_is_lenient(header):
    tokens = table({token_digest(ADMIN): "admin"})
    assert tokens.authenticate(header.format(t=ADMIN), NOW).role == "admin"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {ADMIN}",
        f"Token {ADMIN}",
        f"Bearer {ADMIN} extra",
        f"Bearer {ADMIN}x",
        f"Bearer {token_digest(ADMIN)}",  # the digest is not a credential
        "Bearer \udcff",  # undecodable bytes, as aiohttp surrogate-escapes them
        f"Bearer {AUDITOR}",  # expired, see below
    ],
    ids=[
        "missing", "empty", "no-token", "blank-token", "basic", "other-scheme",
        "extra-part", "unknown", "digest-as-token", "undecodable", "expired",
    ],
)  # fmt: skip
def test_every_bad_header_gets_the_same_message(header):
    tokens = table(
        {
            token_digest(ADMIN): "admin",
            token_digest(AUDITOR): {"role": "auditor", "expires": NOW - 1},
        }
    )
    with pytest.raises(Unauthenticated) as info:
        tokens.authenticate(header, NOW)
    assert str(info.value) == INVALID_TOKEN == "missing or invalid bearer token"


def test_token_is_refused_from_its_expiry_instant_on():
    tokens = table({token_digest(AUDITOR): {"role": "auditor", "expires": NOW}})
    assert tokens.authenticate(f"Bearer {AUDITOR}", NOW - 0.001).role == "auditor"
    for now in (NOW, NOW + 1):
        with pytest.raises(Unauthenticated, match=f"^{INVALID_TOKEN}$"):
            tokens.authenticate(f"Bearer {AUDITOR}", now)


@pytest.mark.parametrize(
    ("expires", "seconds"),
    [
        ("2027-01-01T00:00:00Z", 1798761600.0),
        ("2027-01-01t00:00:00z", 1798761600.0),
        ("2027-01-01T02:00:00+02:00", 1798761600.0),
        ("2027-01-01T00:00:00.5Z", 1798761600.5),
        ("2027-01-01 00:00:00Z", 1798761600.0),
        (1798761600, 1798761600.0),
        (1798761600.25, 1798761600.25),
    ],
)
def test_expires_accepts_rfc3339_and_unix_seconds(expires, seconds):
    principal = table({token_digest(AUDITOR): {"role": "auditor", "expires": expires}}).authenticate(
        f"Bearer {AUDITOR}", NOW
    )
    assert principal.expires == seconds


@pytest.mark.parametrize(
    "expires",
    ["2027-01-01", "2027-01-01T00:00:00", "2027-13-01T00:00:00Z", "tomorrow", True, -1, float("inf"), []],
)
def test_expires_that_is_not_a_time_is_refused(expires):
    with pytest.raises(BadInput, match=r'auth\.tokens\."sha256:[0-9a-f]{8}\.\."\.expires: not an RFC 3339'):
        table({token_digest(AUDITOR): {"role": "auditor", "expires": expires}})


def test_principal_carries_role_tenant_and_expiry():
    tokens = table(
        {
            token_digest(ADMIN): {"role": "admin", "tenant": "*"},
            token_digest(AUDITOR): {"role": "auditor", "tenant": "acme", "expires": "2030-01-01T00:00:00Z"},
        }
    )
    admin = tokens.authenticate(f"Bearer {ADMIN}", NOW)
    auditor = tokens.authenticate(f"Bearer {AUDITOR}", NOW)
    assert (admin.role, admin.tenant, admin.expires) == ("admin", "*", None)
    assert (auditor.role, auditor.tenant, auditor.expires) == ("auditor", "acme", 1893456000.0)
    assert auditor.token_id == "tok-" + digest_hex(AUDITOR)[:12]


def test_upper_case_digest_key_is_read_as_lower_case():
    tokens = table({token_digest(ADMIN).upper(): "admin"})
    assert tokens.authenticate(f"Bearer {ADMIN}", NOW).role == "admin"


def test_plain_key_authenticates_and_warns_by_token_id_only():
    tokens, warnings = TokenTable.from_json({PLAIN: "service", token_digest(ADMIN): "admin"})
    assert tokens.authenticate(f"Bearer {PLAIN}", NOW).role == "service"
    assert warnings == [
        f"auth.tokens: 1 token is stored in plain text (tok-{digest_hex(PLAIN)[:12]}), so the config "
        "file is a credential; replace each with its sha256: form (see docs/config.md)"
    ]
    assert PLAIN not in repr(tokens)


def test_a_token_listed_plain_and_hashed_is_refused():
    with pytest.raises(BadInput, match="listed twice") as info:
        TokenTable.from_json({PLAIN: "service", token_digest(PLAIN): "admin"})
    assert PLAIN not in str(info.value)


def test_plain_key_with_spaces_is_refused_without_echo():
    with pytest.raises(BadInput, match="one key is neither") as info:
        TokenTable.from_json({"my secret token": "admin"})
    assert "secret" not in str(info.value)


def test_token_table_length_counts_tokens():
    assert len(table({token_digest(ADMIN): "admin", PLAIN: "service"})) == 2
    assert len(table(None)) == 0


# --- the auth section --------------------------------------------------------------------


def test_auth_config_absent_denies_everything():
    auth = AuthConfig.from_json(None)
    assert len(auth.tokens) == 0
    assert not any(auth.policy.is_allowed("admin", action) for action in Action)
    assert auth.max_concurrent_queries == 4
    assert auth.warnings == ()


def test_auth_config_reads_tokens_grants_and_limit():
    auth = AuthConfig.from_json(
        {
            "tokens": {token_digest(ADMIN): "admin", token_digest(AUDITOR): "auditor"},
            "grants": {"admin": ["emit", "query", "administer"], "auditor": ["query"]},
            "max_concurrent_queries": 2,
        }
    )
    auditor = auth.tokens.authenticate(f"Bearer {AUDITOR}", NOW)
    assert auth.policy.is_allowed(auditor.role, Action.QUERY)
    assert not auth.policy.is_allowed(auditor.role, Action.ADMINISTER)
    assert auth.max_concurrent_queries == 2 and auth.warnings == ()


def test_auth_config_warns_about_tokens_whose_role_is_granted_nothing():
    auth = AuthConfig.from_json(
        {"tokens": {token_digest(AUDITOR): "auditr"}, "grants": {"auditor": ["query"]}}
    )
    assert auth.warnings == (
        "auth.tokens: 1 token(s) carry role 'auditr', which auth.grants grants nothing, "
        "so they are denied every call",
    )


@pytest.mark.parametrize("role", ["quipu:system", "", "a b", "x" * 65])
def test_role_names_outside_the_plain_alphabet_are_refused(role):
    with pytest.raises(BadInput, match="a role name is"):
        AuthConfig.from_json({"tokens": {token_digest(ADMIN): role}})
    with pytest.raises(BadInput, match="a role name is"):
        AuthConfig.from_json({"grants": {role: ["query"]}})


def test_a_token_used_as_a_role_is_refused_without_echo():
    with pytest.raises(BadInput, match="looks like a token") as info:
        AuthConfig.from_json({"tokens": {token_digest(ADMIN): PLAIN}})
    assert PLAIN not in str(info.value)


def test_unknown_key_in_auth_section_is_refused():
    with pytest.raises(BadInput, match='auth: unknown key "token"'):
        AuthConfig.from_json({"token": {}})


# --- QueryLimiter -------------------------------------------------------------------------


def test_query_limiter_refuses_the_slot_beyond_the_limit():
    limiter = QueryLimiter(2)
    with limiter.slot("tok-a"), limiter.slot("tok-a"):
        with (
            pytest.raises(TooManyQueries, match="this token already runs 2 queries; retry when one finishes"),
            limiter.slot("tok-a"),
        ):
            pass
        with limiter.slot("tok-b"):  # per token: another token is not affected
            assert limiter.running("tok-b") == 1
    assert limiter.running("tok-a") == 0


def test_query_limiter_releases_the_slot_when_the_query_raises():
    limiter = QueryLimiter(1)
    with pytest.raises(ValueError), limiter.slot("tok-a"):
        raise ValueError("query failed")
    assert limiter.running("tok-a") == 0
    with limiter.slot("tok-a"):
        pass


def test_a_refused_slot_does_not_count():
    limiter = QueryLimiter(1)
    with limiter.slot("tok-a"):
        for _ in range(3):
            with pytest.raises(TooManyQueries), limiter.slot("tok-a"):
                pass
        assert limiter.running("tok-a") == 1
    assert limiter.running("tok-a") == 0


def test_query_limiter_admits_exactly_limit_threads_at_once():
    limiter, threads_n, limit = QueryLimiter(3), 12, 3
    release = threading.Event()
    lock = threading.Lock()
    outcomes: list[str] = []
    all_decided = threading.Event()

    def decided(outcome: str) -> None:
        with lock:
            outcomes.append(outcome)
            if len(outcomes) == threads_n:
                all_decided.set()

    def query() -> None:
        try:
            with limiter.slot("tok-a"):
                decided("ran")
                release.wait(WAIT)  # hold the slot until every thread has tried
        except TooManyQueries:
            decided("refused")

    workers = [threading.Thread(target=query) for _ in range(threads_n)]
    for worker in workers:
        worker.start()
    assert all_decided.wait(WAIT)
    assert limiter.running("tok-a") == limit
    release.set()
    for worker in workers:
        worker.join(WAIT)
    assert outcomes.count("ran") == limit and outcomes.count("refused") == threads_n - limit
    assert limiter.running("tok-a") == 0


def test_lowering_the_limit_keeps_running_queries_and_refuses_new_ones():
    limiter = QueryLimiter(3)
    with limiter.slot("tok-a"), limiter.slot("tok-a"):
        limiter.limit = 1
        assert limiter.running("tok-a") == 2
        with pytest.raises(TooManyQueries, match="already runs 2 queries"), limiter.slot("tok-a"):
            pass
    with limiter.slot("tok-a"):
        assert limiter.running("tok-a") == 1


def test_raising_the_limit_admits_more_at_once():
    limiter = QueryLimiter(1)
    with limiter.slot("tok-a"):
        limiter.limit = 2
        with limiter.slot("tok-a"):
            assert limiter.running("tok-a") == 2


def test_unlimited_limiter_still_counts_so_a_later_limit_is_exact():
    limiter = QueryLimiter(None)
    with limiter.slot("tok-a"), limiter.slot("tok-a"), limiter.slot("tok-a"):
        limiter.limit = 3
        with pytest.raises(TooManyQueries), limiter.slot("tok-a"):
            pass


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "2"])
def test_query_limit_must_be_a_positive_integer_or_none(limit):
    with pytest.raises(BadInput, match="max_concurrent_queries"):
        QueryLimiter(limit)


def test_query_limiter_works_inside_asyncio_without_blocking():
    limiter = QueryLimiter(1)

    async def query(started: asyncio.Event, finish: asyncio.Event) -> None:
        with limiter.slot("tok-a"):
            started.set()
            await finish.wait()

    async def main() -> None:
        started, finish = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(query(started, finish))
        await started.wait()
        with pytest.raises(TooManyQueries), limiter.slot("tok-a"):  # refused at once, loop not stalled
            pass
        finish.set()
        await running
        with limiter.slot("tok-a"):
            pass

    asyncio.run(main())
