"""The shard config file: the shipped example loads, JSON and YAML read alike, every
mistake is a BadInput naming its key path, and no message ever carries a token."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from quipu.core.errors import BadInput
from quipu.core.retention import MICROS_PER_DAY, RetentionPolicy
from quipu.core.sync import SyncPolicy
from quipu.shard.auth import new_token, token_digest
from quipu.shard.config import HealthSection, PipelineSection, load_auth, load_config
from quipu.shard.permissions import Action

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "shard.yaml"
DOCS = REPO / "docs" / "config.md"


def _pem_private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def key_files(tmp_path, rsa_private) -> Path:
    """keys/ as examples/shard.yaml names them: a 32-byte HMAC secret and an RSA pair."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "hmac.key").write_bytes(os.urandom(32))
    (keys / "rsa.pem").write_bytes(_pem_private(rsa_private))
    (keys / "rsa.pub.pem").write_bytes(_pem_public(rsa_private))
    return keys


@pytest.fixture
def example(tmp_path, key_files) -> Path:
    path = tmp_path / "shard.yaml"
    shutil.copy(EXAMPLE, path)
    return path


def write(path: Path, obj: object) -> Path:
    """`obj` as JSON or YAML, by the path's extension."""
    path.write_text(json.dumps(obj) if path.suffix == ".json" else yaml.safe_dump(obj))
    return path


def minimal(**sections: object) -> dict:
    return {"listen": "127.0.0.1:0", "store": {"root": "data"}, **sections}


def bad_input(path: Path, loader=load_config) -> str:
    with pytest.raises(BadInput) as info:
        loader(path)
    return str(info.value)


# --- the example and the two syntaxes --------------------------------------------------


def test_example_config_loads_with_generated_keys(example, tmp_path):
    config = load_config(example)
    assert config.listen == ("127.0.0.1", 8080)
    assert config.path == example
    assert config.store.root == tmp_path / "data" / "shard-0"
    assert config.store.sync == SyncPolicy.every_n_or_interval(1000, 0.02)
    assert config.store.retention == RetentionPolicy(365 * MICROS_PER_DAY, None)
    assert config.store.access_log is True
    assert config.store.access_retention == RetentionPolicy(90 * MICROS_PER_DAY)
    assert config.keys.signing_key() is not None
    assert config.keys.hmac_versions() == [1]
    assert len(config.auth.tokens) == 3
    assert config.auth.policy.is_allowed("auditor", Action.QUERY)
    assert not config.auth.policy.is_allowed("auditor", Action.EMIT)
    assert config.auth.max_concurrent_queries == 4
    assert config.auth.warnings == ()
    assert config.verify_interval == 3600
    assert config.health == HealthSection(1 << 30, 0.10, False)
    assert config.idempotency_window == 100_000
    assert config.sink is None and config.tls is None
    assert config.max_body_bytes == 1 << 20
    assert config.pipeline == PipelineSection(32768, 1000, 3)


def test_example_store_config_is_what_the_store_opens(example, tmp_path):
    store = load_config(example).store_config()
    assert Path(store.root) == tmp_path / "data" / "shard-0"
    assert store.max_segment_bytes == 16 << 20
    assert store.access_log and not store.plaintext_cache
    assert store.keys.signing_key() is not None


def test_docs_embed_the_example_verbatim():
    assert f"```yaml\n{EXAMPLE.read_text()}```" in DOCS.read_text()


def test_json_and_yaml_read_the_same(example, tmp_path):
    as_json = write(tmp_path / "shard.json", yaml.safe_load(example.read_text()))
    from_yaml, from_json = load_config(example), load_config(as_json)
    for name in ("listen", "store", "verify_interval", "health", "idempotency_window", "pipeline"):
        assert getattr(from_yaml, name) == getattr(from_json, name), name
    assert from_yaml.auth.tokens.role_counts() == from_json.auth.tokens.role_counts()
    assert from_yaml.auth.policy == from_json.auth.policy


def test_minimal_config_takes_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path / "shard.yaml", minimal()))
    assert config.store.sync == SyncPolicy.every_n_or_interval(1000, 0.02)
    assert config.store.max_segment_bytes == 16 << 20
    assert config.store.access_log is False
    assert not config.keys.has_rsa and not config.keys.has_hmac
    assert len(config.auth.tokens) == 0 and dict(config.auth.policy.grants) == {}
    assert config.auth.max_concurrent_queries == 4
    assert config.verify_interval is None
    assert config.health == HealthSection()
    assert config.pipeline == PipelineSection()
    assert config.sink is None and config.tls is None


def test_null_turns_retention_and_query_limit_off(tmp_path):
    store = {"root": "d", "retention_days": None, "access_retention_days": None}
    config = load_config(
        write(tmp_path / "s.json", minimal(store=store, auth={"max_concurrent_queries": None}))
    )
    assert config.store.retention == RetentionPolicy()
    assert config.store.access_retention == RetentionPolicy()
    assert config.auth.max_concurrent_queries is None


def test_ipv6_listen_address_is_unbracketed(tmp_path):
    assert load_config(write(tmp_path / "s.yaml", minimal(listen="[::1]:9000"))).listen == ("::1", 9000)


def test_versioned_keys_and_a_public_only_rsa_key_make_a_write_only_ring(tmp_path, key_files):
    (key_files / "hmac-2.key").write_text(os.urandom(32).hex())
    keys = {
        "hmac_keys": [{"version": 1, "file": "keys/hmac.key"}, {"version": 2, "file": "keys/hmac-2.key"}],
        "rsa_keys": [{"version": 1, "public_key_pem_file": "keys/rsa.pub.pem"}],
    }
    ring = load_config(write(tmp_path / "s.yaml", minimal(keys=keys))).keys
    assert ring.hmac_versions() == [2, 1]
    assert ring.rsa_versions() == [1] and ring.signing_key() is None


def test_sink_and_tls_sections(tmp_path):
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    config = load_config(
        write(
            tmp_path / "s.yaml",
            minimal(
                sink={"syslog_udp": "10.0.0.5:514"},
                tls={"cert_pem_file": "cert.pem", "key_pem_file": str(tmp_path / "key.pem")},
            ),
        )
    )
    assert config.sink.address == ("10.0.0.5", 514)
    assert (config.sink.app_name, config.sink.queue_capacity) == ("quipu", 10_000)
    assert (config.tls.cert_pem_file, config.tls.key_pem_file) == (
        tmp_path / "cert.pem",
        tmp_path / "key.pem",
    )


def test_yaml_unquoted_time_is_read_as_the_same_instant(tmp_path):
    digest = token_digest("t")
    text = HEAD + f'auth:\n  tokens:\n    "{digest}": {{role: a, expires: 2027-01-01T00:00:00Z}}\n'
    (tmp_path / "s.yaml").write_text(text)
    principal = load_config(tmp_path / "s.yaml").auth.tokens.authenticate("Bearer t", 0)
    assert principal.expires == 1798761600.0


# --- paths -----------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch, key_files):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    keys = {"hmac_key_file": "keys/hmac.key"}
    config = load_config(Path("..") / write(tmp_path / "s.yaml", minimal(keys=keys)).name)
    assert config.store.root.resolve() == (tmp_path / "data").resolve()
    assert config.keys.has_hmac


def test_absolute_paths_are_kept(tmp_path):
    root = tmp_path / "abs-root"
    config = load_config(write(tmp_path / "s.yaml", minimal(store={"root": str(root)})))
    assert config.store.root == root


# --- every mistake names its key path ----------------------------------------------------

AUDITOR = token_digest("auditor-token")
BAD_CASES = [
    pytest.param({"listn": "x"}, 'top level: unknown key "listn"', id="unknown top-level key"),
    pytest.param(
        {"store": {"root": "d", "retention_dayz": 1}},
        'store: unknown key "retention_dayz"',
        id="unknown store key",
    ),
    pytest.param(
        {"store": {"root": "d", "max_segment_bytes": "16M"}},
        "store.max_segment_bytes: expected an integer, got a string",
        id="wrong type",
    ),
    pytest.param(
        {"pipeline": {"batch_max": True}},
        "pipeline.batch_max: expected an integer, got a boolean",
        id="bool for int",
    ),
    pytest.param(
        {"store": {"root": "d", "access_log": 1}},
        "store.access_log: expected true or false",
        id="int for bool",
    ),
    pytest.param(
        {"store": {"root": "d", "max_segment_bytes": 100}},
        "store.max_segment_bytes: must be at least 4096",
        id="segment too small",
    ),
    pytest.param(
        {"limits": {"max_body_bytes": 0}}, "limits.max_body_bytes: must be at least 1", id="zero size"
    ),
    pytest.param(
        {"health": {"min_free_bytes": None}},
        "health.min_free_bytes: must not be null",
        id="null where no default is off",
    ),
    pytest.param(
        {"health": {"min_free_ratio": 1.5}},
        "health.min_free_ratio: must be between 0 and 1",
        id="ratio above 1",
    ),
    pytest.param(
        {"store": {"root": "d", "retention_days": -1}},
        "store.retention_days: must be a positive number",
        id="negative retention",
    ),
    pytest.param({"listen": "localhost"}, "listen: expected HOST:PORT", id="listen without port"),
    pytest.param({"listen": "127.0.0.1:70000"}, "listen: expected HOST:PORT", id="listen port too big"),
    pytest.param({"listen": "::1:8080"}, "listen: expected HOST:PORT", id="listen ipv6 without brackets"),
    pytest.param(
        {"listen": 8080}, "listen: expected a non-empty string, got an integer", id="listen is a number"
    ),
    pytest.param(
        {"store": {"root": "d", "sync_policy": "sometimes"}},
        "store.sync_policy: unknown sync policy",
        id="bad sync policy",
    ),
    pytest.param({"store": {}}, "store.root: required key is missing", id="missing store.root"),
    pytest.param({"store": None}, "store.root: required key is missing", id="missing store"),
    pytest.param({"health": [1]}, "health: expected an object", id="section not an object"),
    pytest.param(
        {"auth": {"tokens": {AUDITOR: {"role": "auditor", "expires": "next year"}}}},
        f'auth.tokens."{AUDITOR[:15]}..".expires: not an RFC 3339 time',
        id="bad expires",
    ),
    pytest.param(
        {"auth": {"tokens": {AUDITOR: {"role": "auditor", "expires": "2027-01-01T00:00:00"}}}},
        f'auth.tokens."{AUDITOR[:15]}..".expires: not an RFC 3339 time',
        id="expires without offset",
    ),
    pytest.param(
        {"auth": {"tokens": {AUDITOR: {"role": "auditor", "tenat": "acme"}}}},
        f'auth.tokens."{AUDITOR[:15]}..": unknown key "tenat"',
        id="token entry unknown key",
    ),
    pytest.param(
        {"auth": {"tokens": {AUDITOR: {"tenant": "acme"}}}},
        '..".role: required key is missing',
        id="token without role",
    ),
    pytest.param(
        {"auth": {"tokens": {AUDITOR: {"role": "a", "tenant": "../etc"}}}},
        '..".tenant: tenant',
        id="bad tenant",
    ),
    pytest.param(
        {"auth": {"tokens": {AUDITOR: "quipu:system"}}},
        f'auth.tokens."{AUDITOR[:15]}..": a role name is',
        id="reserved role",
    ),
    pytest.param(
        {"auth": {"tokens": {"sha256:abcd": "admin"}}},
        "auth.tokens: a key starting with sha256:",
        id="short digest",
    ),
    pytest.param(
        {"auth": {"grants": {"auditor": ["read"]}}},
        "auth.grants.auditor: unknown action 'read'",
        id="unknown action",
    ),
    pytest.param(
        {"auth": {"grants": {"auditor": "query"}}},
        "auth.grants.auditor: expected a list",
        id="grants not a list",
    ),
    pytest.param(
        {"auth": {"max_concurrent_queries": 0}},
        "auth.max_concurrent_queries: must be at least 1",
        id="limit zero",
    ),
    pytest.param(
        {"keys": {"hmac_key_file": "nope.key"}},
        "keys.hmac_key_file: HMAC key version 1: cannot read key file",
        id="missing key file",
    ),
    pytest.param(
        {"keys": {"private_key_pem_file": "nope.pem"}},
        "keys.private_key_pem_file: cannot read",
        id="missing pem file",
    ),
    pytest.param(
        {"keys": {"hmac_keys": [{"file": "k"}]}},
        "keys.hmac_keys[0].version: required key is missing",
        id="versioned key without version",
    ),
    pytest.param(
        {"sink": {"app_name": "q"}}, "sink.syslog_udp: required key is missing", id="sink without address"
    ),
    pytest.param(
        {"sink": {"syslog_udp": "10.0.0.5:0"}},
        "sink.syslog_udp: expected HOST:PORT with a port 1-65535",
        id="sink port zero",
    ),
    pytest.param(
        {"tls": {"cert_pem_file": "c.pem", "key_pem_file": "k.pem"}},
        "tls.cert_pem_file: cannot read",
        id="tls file missing",
    ),
]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize(("change", "expected"), BAD_CASES)
def test_bad_config_is_refused_naming_the_key_path(change, expected, suffix, tmp_path):
    message = bad_input(write(tmp_path / f"shard{suffix}", minimal(**change)))
    assert expected in message


def test_missing_listen_is_refused(tmp_path):
    assert "listen: required key is missing" in bad_input(
        write(tmp_path / "s.yaml", {"store": {"root": "d"}})
    )


def test_short_hmac_key_is_refused(tmp_path):
    (tmp_path / "short.key").write_bytes(os.urandom(16))
    message = bad_input(write(tmp_path / "s.yaml", minimal(keys={"hmac_key_file": "short.key"})))
    assert "keys.hmac_key_file: HMAC key version 1 is shorter than 32 bytes" in message


def test_rsa_files_of_two_different_keys_are_refused(tmp_path, rsa_private, other_rsa_private):
    (tmp_path / "a.pem").write_bytes(_pem_private(rsa_private))
    (tmp_path / "b.pub.pem").write_bytes(_pem_public(other_rsa_private))
    keys = {"private_key_pem_file": "a.pem", "public_key_pem_file": "b.pub.pem"}
    assert "not one key pair" in bad_input(write(tmp_path / "s.yaml", minimal(keys=keys)))


def test_a_non_pem_key_file_is_refused_by_name(tmp_path):
    (tmp_path / "rsa.pem").write_text("not a key")
    message = bad_input(write(tmp_path / "s.yaml", minimal(keys={"private_key_pem_file": "rsa.pem"})))
    assert message.startswith("keys.private_key_pem_file: cannot load the RSA key")


def test_single_and_versioned_key_forms_cannot_mix(tmp_path, key_files):
    keys = {"hmac_key_file": "keys/hmac.key", "hmac_keys": [{"version": 2, "file": "keys/hmac.key"}]}
    assert "give hmac_key_file or hmac_keys, not both" in bad_input(
        write(tmp_path / "s.yaml", minimal(keys=keys))
    )


def test_a_key_version_given_twice_is_refused(tmp_path, key_files):
    keys = {"hmac_keys": [{"version": 1, "file": "keys/hmac.key"}, {"version": 1, "file": "keys/hmac.key"}]}
    assert "HMAC key version 1 is given twice" in bad_input(write(tmp_path / "s.yaml", minimal(keys=keys)))


def test_json_syntax_error_gives_line_and_column(tmp_path):
    (tmp_path / "s.json").write_text('{\n  "listen": "127.0.0.1:0",\n  "store": {"root": "d",}\n}')
    assert "JSON syntax error at line 3, column" in bad_input(tmp_path / "s.json")


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    (tmp_path / "s.yaml").write_text("listen: a\nstore: {root: d\n")
    assert "YAML error at line" in bad_input(tmp_path / "s.yaml")


def test_repeated_key_is_refused_in_yaml_and_json(tmp_path):
    (tmp_path / "s.yaml").write_text("listen: '127.0.0.1:0'\nstore: {root: a}\nstore: {root: b}\n")
    (tmp_path / "s.json").write_text(
        '{"listen": "127.0.0.1:0", "store": {"root": "a"}, "store": {"root": "b"}}'
    )
    assert "appears twice" in bad_input(tmp_path / "s.yaml")
    assert "same key twice" in bad_input(tmp_path / "s.json")


def test_missing_config_file_names_the_path_and_the_reason(tmp_path):
    message = bad_input(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in message and "No such file or directory" in message


def test_unknown_extension_is_refused(tmp_path):
    (tmp_path / "shard.toml").write_text("")
    assert "name it *.json, *.yaml or *.yml" in bad_input(tmp_path / "shard.toml")


def test_top_level_list_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text("- listen\n")
    assert "expected an object" in bad_input(tmp_path / "s.yaml")


def test_yaml_python_tags_are_refused(tmp_path):
    (tmp_path / "s.yaml").write_text("listen: !!python/object/apply:os.getpid []\nstore: {root: d}\n")
    assert "YAML error" in bad_input(tmp_path / "s.yaml")


# --- secrets stay out of messages ------------------------------------------------------

TOKEN = new_token()
HEAD = 'listen: "127.0.0.1:0"\nstore: {root: d}\n'


@pytest.mark.parametrize(
    "text",
    [
        # a plain token entry with a bad expires
        HEAD + f'auth: {{tokens: {{"{TOKEN}": {{role: a, expires: soon}}}}}}\n',
        # a plain token entry of the wrong type
        HEAD + f'auth: {{tokens: {{"{TOKEN}": [admin]}}}}\n',
        # a token pasted one level too high
        HEAD + f'auth: {{"{TOKEN}": admin}}\n',
        # a token as a top-level key
        f'"{TOKEN}": admin\nlisten: "127.0.0.1:0"\nstore: {{root: d}}\n',
        # a YAML syntax error on the token's line
        HEAD + f'auth:\n  tokens:\n    "{TOKEN}": [admin\n',
        # the same token twice
        HEAD + f'auth: {{tokens: {{"{TOKEN}": a, "{TOKEN}": b}}}}\n',
        # a token where the role belongs
        HEAD + f'auth: {{tokens: {{"{token_digest(TOKEN)}": "{TOKEN}"}}}}\n',
        # a token as the listen address
        f'listen: "{TOKEN}"\nstore: {{root: d}}\n',
    ],
    ids=["bad-expires", "wrong-type", "one-level-up", "top-level", "syntax", "twice", "as-role", "as-listen"],
)
def test_error_messages_never_contain_the_token(text, tmp_path):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(BadInput) as info:
        load_config(tmp_path / "s.yaml")
    shown = "".join(str(e) for e in (info.value, info.value.__cause__, info.value.__context__) if e)
    assert TOKEN not in shown
    assert TOKEN[3:15] not in shown  # not even a piece of it


def test_a_hashed_key_is_named_by_its_first_8_hex_digits_only(tmp_path):
    digest = token_digest(TOKEN)
    auth = {"tokens": {digest: {"role": "a", "expires": "soon"}}}
    message = bad_input(write(tmp_path / "s.yaml", minimal(auth=auth)))
    assert f'"{digest[:15]}.."' in message and digest[15:23] not in message


def test_plain_token_warning_names_only_the_token_id(tmp_path):
    config = load_config(write(tmp_path / "s.yaml", minimal(auth={"tokens": {TOKEN: "admin"}})))
    (warning,) = [w for w in config.auth.warnings if "plain text" in w]
    assert TOKEN not in warning and "tok-" + token_digest(TOKEN)[7:19] in warning


# --- load_auth (SIGHUP) ----------------------------------------------------------------


def test_load_auth_reads_only_the_auth_section(tmp_path):
    auth = {"tokens": {AUDITOR: "auditor"}, "grants": {"auditor": ["query"]}, "max_concurrent_queries": 2}
    broken_elsewhere = {"listen": "nowhere", "store": {"root": 5}, "keys": {"hmac_key_file": "absent.key"}}
    path = write(tmp_path / "s.yaml", {**broken_elsewhere, "auth": auth})
    loaded = load_auth(path)
    assert loaded.tokens.authenticate("Bearer auditor-token", 0).role == "auditor"
    assert loaded.max_concurrent_queries == 2
    assert "listen" in bad_input(path)  # the full load still refuses the file


def test_load_auth_refuses_a_broken_auth_section(tmp_path):
    path = write(tmp_path / "s.yaml", minimal(auth={"grants": {"auditor": ["read"]}}))
    assert "auth.grants.auditor" in bad_input(path, load_auth)


def test_load_auth_still_checks_top_level_key_names(tmp_path):
    assert 'unknown key "listn"' in bad_input(write(tmp_path / "s.yaml", {"listn": 1}), load_auth)


def test_load_auth_without_auth_denies_everything(tmp_path):
    auth = load_auth(write(tmp_path / "s.yaml", minimal()))
    assert len(auth.tokens) == 0 and not auth.policy.is_allowed("admin", Action.QUERY)
