"""The shard's config file, JSON or YAML: `load_config` at startup, `load_auth` on SIGHUP.

The shape is the reference server's, so an operator's file carries over; every key is
described in docs/config.md and examples/shard.yaml is a complete working file. Loading is
strict (unknown keys, wrong types and unreadable key files are errors naming the key path)
because a typo in a security setting must stop the shard, not quietly fall back to a
default. Relative paths are taken from the config file's directory, so a config means the
same whichever directory the shard is started from.
"""

import json
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.exceptions import UnsupportedAlgorithm

from quipu.core.audit_store import StoreConfig
from quipu.core.errors import BadInput
from quipu.core.keyring import HmacKey, KeyRing, RsaKey
from quipu.core.retention import MICROS_PER_DAY, RetentionPolicy
from quipu.core.sync import SyncPolicy
from quipu.shard.auth import AuthConfig
from quipu.shard.config_fields import Fields, read_named_file, type_name

# The reference server's sections, plus `pipeline` (ours).
TOP_LEVEL = (
    *("listen", "store", "keys", "auth", "verify", "health", "idempotency", "sink", "tls", "limits"),
    "pipeline",
)
STORE_KEYS = (
    *("root", "sync_policy", "max_segment_bytes", "retention_days", "retention_max_bytes"),
    *("plaintext_cache", "access_log", "access_retention_days"),
)
DEFAULT_SYNC_POLICY = "every_n_or_interval:1000:0.02"
MIN_SEGMENT_BYTES = 4096  # TableConfig's floor; checked here too so the error names the key
_ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>[0-9]{1,5})")
_APP_NAME = re.compile(r"[\x21-\x7e]{1,48}")  # RFC 5424 §6.2.5 APP-NAME


@dataclass(frozen=True)
class StoreSection:
    root: Path
    sync: SyncPolicy
    max_segment_bytes: int
    retention: RetentionPolicy
    plaintext_cache: bool
    access_log: bool
    access_retention: RetentionPolicy


@dataclass(frozen=True)
class HealthSection:
    min_free_bytes: int = 1 << 30  # below this (or the ratio) healthz reports degraded
    min_free_ratio: float = 0.10
    reject_emit_when_disk_full: bool = False  # fast 507 while the ENOSPC latch is set


@dataclass(frozen=True)
class SinkSection:
    address: tuple[str, int]  # syslog over UDP, RFC 5424
    app_name: str = "quipu"
    queue_capacity: int = 10_000


@dataclass(frozen=True)
class TlsSection:
    cert_pem_file: Path  # certificate chain
    key_pem_file: Path


@dataclass(frozen=True)
class PipelineSection:
    queue_capacity: int = 32_768
    batch_max: int = 1_000
    max_retries: int = 3


@dataclass(frozen=True)
class ShardConfig:
    listen: tuple[str, int]
    store: StoreSection
    keys: KeyRing
    auth: AuthConfig
    verify_interval: float | None  # seconds between periodic verify runs; None: never
    health: HealthSection
    idempotency_window: int
    sink: SinkSection | None
    tls: TlsSection | None
    max_body_bytes: int
    pipeline: PipelineSection
    path: Path  # the file this came from: SIGHUP re-reads its auth section

    def store_config(self) -> StoreConfig:
        s = self.store
        return StoreConfig(
            root=s.root,
            keys=self.keys,
            sync=s.sync,
            max_segment_bytes=s.max_segment_bytes,
            retention=s.retention,
            plaintext_cache=s.plaintext_cache,
            access_log=s.access_log,
            access_retention=s.access_retention,
        )


def load_config(path: str | Path) -> ShardConfig:
    """Read and check the whole file; BadInput names the first key that is wrong."""
    path = Path(path).absolute()
    top = Fields(read_config_file(path), "", TOP_LEVEL)
    base = path.parent
    sink = top.raw("sink")
    tls = top.raw("tls")
    idempotency = Fields(top.raw("idempotency"), "idempotency", ("window",))
    limits = Fields(top.raw("limits"), "limits", ("max_body_bytes",))
    verify = Fields(top.raw("verify"), "verify", ("interval_secs",))
    return ShardConfig(
        listen=parse_address(top.text("listen"), "listen", min_port=0),
        store=_store(top.raw("store"), base),
        keys=_keys(top.raw("keys"), base),
        auth=AuthConfig.from_json(top.raw("auth"), "auth"),
        verify_interval=verify.optional_positive("interval_secs", None),
        health=_health(top.raw("health")),
        idempotency_window=idempotency.integer("window", 100_000),
        sink=None if sink is None else _sink(sink),
        tls=None if tls is None else _tls(tls, base),
        max_body_bytes=limits.integer("max_body_bytes", 1 << 20),
        pipeline=_pipeline(top.raw("pipeline")),
        path=path,
    )


def load_auth(path: str | Path) -> AuthConfig:
    """Re-read the auth section only (SIGHUP). Other sections need a restart, so they are
    not re-checked here; their key names are, so a typo surfaces before that restart."""
    top = Fields(read_config_file(Path(path).absolute()), "", TOP_LEVEL)
    return AuthConfig.from_json(top.raw("auth"), "auth")


def read_config_file(path: Path) -> Mapping[str, object]:
    """Parse by extension (.json or .yaml/.yml). Syntax errors give line and column but
    never the offending line itself, which could hold a token."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise BadInput(
            f"config file {path}: name it *.json, *.yaml or *.yml (the extension picks the parser)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise BadInput(
            f"cannot read config file {path} ({reason}); check the path and its permissions"
        ) from err
    except UnicodeDecodeError as err:
        raise BadInput(f"config file {path} is not UTF-8 text") from err
    data, problem = _parse(text, json_syntax=suffix == ".json")
    if problem is not None:
        raise BadInput(f"config file {path}: {problem}")
    if not isinstance(data, Mapping):
        raise BadInput(
            f"config file {path}: expected an object (listen, store, ...) at the top, got {type_name(data)}"
        )
    return data


def _parse(text: str, json_syntax: bool) -> tuple[object, str | None]:
    """(data, None) or (None, problem). The parsers' own messages quote the offending line,
    which may hold a token, so only line, column and the kind of problem are kept, and the
    caller raises outside this `except`: no exception context holds the parser's error."""
    try:
        return (_parse_json(text) if json_syntax else _parse_yaml(text)), None
    except json.JSONDecodeError as err:
        return None, f"JSON syntax error at line {err.lineno}, column {err.colno}: {err.msg}"
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, f"YAML error{at}: {err.problem or err.context or 'syntax error'}"
    except _DuplicateKey as err:
        return None, str(err)
    except yaml.YAMLError:  # a reader error: bad characters in the stream
        return None, "not readable as YAML (control characters or a bad encoding?)"


class _DuplicateKey(ValueError):
    def __init__(self) -> None:
        super().__init__("an object has the same key twice (the key is not shown); keep one")


def _parse_json(text: str) -> object:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        if len({key for key, _ in pairs}) != len(pairs):
            raise _DuplicateKey()
        return dict(pairs)

    return json.loads(text, object_pairs_hook=no_duplicates)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated key. Plain YAML keeps the last one silently, so
    a token listed twice or a setting written twice would hide one of them."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are overrides by design
            continue
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, "a key appears twice in one mapping (the key is not shown)", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _parse_yaml(text: str) -> object:
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python object tags


def parse_address(text: str | None, where: str, *, min_port: int) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port)."""
    match = _ADDRESS.fullmatch(text or "")
    if not match or not min_port <= int(match["port"]) <= 65535:
        raise BadInput(
            f"{where}: expected HOST:PORT with a port {min_port}-65535 (IPv6 in brackets, e.g. [::1]:8080)"
        )
    return match["v6"] or match["host"], int(match["port"])


def _store(obj: object, base: Path) -> StoreSection:
    f = Fields(obj, "store", STORE_KEYS)
    root = f.file_path("root", base)
    try:
        sync = SyncPolicy.parse(f.text("sync_policy", DEFAULT_SYNC_POLICY))
    except BadInput as err:
        raise BadInput(f"{f.path('sync_policy')}: {err}") from err
    return StoreSection(
        root=root,
        sync=sync,
        max_segment_bytes=f.integer("max_segment_bytes", 16 << 20, minimum=MIN_SEGMENT_BYTES),
        retention=_retention(
            f.optional_positive("retention_days", 365),
            f.optional_integer("retention_max_bytes", None),
        ),
        plaintext_cache=f.boolean("plaintext_cache", False),
        access_log=f.boolean("access_log", False),
        access_retention=_retention(f.optional_positive("access_retention_days", 90), None),
    )


def _retention(days: float | None, max_bytes: int | None) -> RetentionPolicy:
    """None for both keeps everything. A fraction of a day is allowed (tests, staging)."""
    age = None if days is None else max(1, round(days * MICROS_PER_DAY))
    return RetentionPolicy(max_age_micros=age, max_bytes=max_bytes)


def _keys(obj: object, base: Path) -> KeyRing:
    """Either the reference server's single files (version 1 of each kind) or versioned
    lists; not both for one kind, since which file is which version would be a guess."""
    single = ("hmac_key_file", "public_key_pem_file", "private_key_pem_file")
    f = Fields(obj, "keys", (*single, "hmac_keys", "rsa_keys"))
    hmac: list[HmacKey] = []
    rsa: list[RsaKey] = []
    if f.has("hmac_key_file"):
        if f.has("hmac_keys"):
            raise BadInput("keys: give hmac_key_file or hmac_keys, not both (the file is version 1)")
        hmac.append(_hmac_key(1, f, "hmac_key_file", base))
    if f.has("public_key_pem_file") or f.has("private_key_pem_file"):
        if f.has("rsa_keys"):
            raise BadInput(
                "keys: give public/private_key_pem_file or rsa_keys, not both (the files are version 1)"
            )
        rsa.append(_rsa_key(1, f, base))
    for i, entry in enumerate(_entries(f, "hmac_keys")):
        e = Fields(entry, f"keys.hmac_keys[{i}]", ("version", "file"))
        hmac.append(_hmac_key(e.integer("version"), e, "file", base))
    for i, entry in enumerate(_entries(f, "rsa_keys")):
        e = Fields(entry, f"keys.rsa_keys[{i}]", ("version", "public_key_pem_file", "private_key_pem_file"))
        rsa.append(_rsa_key(e.integer("version"), e, base))
    try:
        return KeyRing(rsa, hmac)
    except BadInput as err:  # a version given twice
        raise BadInput(f"keys: {err}") from err


def _entries(f: Fields, key: str) -> list[object]:
    value = f.raw(key)
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise BadInput(f"{f.path(key)}: expected a non-empty list of keys, got {type_name(value)}")
    return value


def _hmac_key(version: int, f: Fields, key: str, base: Path) -> HmacKey:
    try:
        return HmacKey.from_file(version, f.file_path(key, base))
    except BadInput as err:  # unreadable or too short; the message never holds the secret
        raise BadInput(f"{f.path(key)}: {err}") from err


def _rsa_key(version: int, f: Fields, base: Path) -> RsaKey:
    """A version with a private key signs; with only the public one the shard is a
    write-only node (encrypts, verifies, never decrypts or signs)."""
    public_path = f.optional_file_path("public_key_pem_file", base)
    private_path = f.optional_file_path("private_key_pem_file", base)
    if public_path is None and private_path is None:
        raise BadInput(f"{f.where}: give public_key_pem_file, private_key_pem_file or both")
    where = f.path("private_key_pem_file" if private_path else "public_key_pem_file")
    public_pem = None if public_path is None else read_named_file(public_path, f.path("public_key_pem_file"))
    private_pem = None if private_path is None else read_named_file(private_path, where)
    try:
        key = RsaKey.from_pem(version, public_pem, private_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        # ValueError: not PEM / not a key; TypeError: the key is encrypted with a passphrase.
        raise BadInput(
            f"{where}: cannot load the RSA key; quipu reads unencrypted PEM (PKCS#8, PKCS#1 or "
            "SubjectPublicKeyInfo): keep the private key safe by file permissions, not a passphrase"
        ) from err
    except BadInput as err:
        raise BadInput(f"{where}: {err}") from err
    if (
        key.private
        and public_pem
        and key.private.public_key().public_numbers() != key.public.public_numbers()
    ):
        raise BadInput(f"{f.where}: the public and the private key files are not one key pair")
    return key


def _health(obj: object) -> HealthSection:
    f = Fields(obj, "health", ("min_free_bytes", "min_free_ratio", "reject_emit_when_disk_full"))
    d = HealthSection()
    return HealthSection(
        min_free_bytes=f.integer("min_free_bytes", d.min_free_bytes, minimum=0),
        min_free_ratio=f.fraction("min_free_ratio", d.min_free_ratio),
        reject_emit_when_disk_full=f.boolean("reject_emit_when_disk_full", d.reject_emit_when_disk_full),
    )


def _sink(obj: object) -> SinkSection:
    f = Fields(obj, "sink", ("syslog_udp", "app_name", "queue_capacity"))
    app_name = f.text("app_name", "quipu")
    if not _APP_NAME.fullmatch(app_name):
        raise BadInput(f"{f.path('app_name')}: use 1-48 visible ASCII characters without spaces (RFC 5424)")
    return SinkSection(
        address=parse_address(f.text("syslog_udp"), f.path("syslog_udp"), min_port=1),
        app_name=app_name,
        queue_capacity=f.integer("queue_capacity", 10_000),
    )


def _tls(obj: object, base: Path) -> TlsSection:
    f = Fields(obj, "tls", ("cert_pem_file", "key_pem_file"))
    paths = {key: f.file_path(key, base) for key in ("cert_pem_file", "key_pem_file")}
    for key, path in paths.items():
        read_named_file(path, f.path(key))  # readable now, not first when the listener starts
    return TlsSection(**paths)


def _pipeline(obj: object) -> PipelineSection:
    f = Fields(obj, "pipeline", ("queue_capacity", "batch_max", "max_retries"))
    d = PipelineSection()
    return PipelineSection(
        queue_capacity=f.integer("queue_capacity", d.queue_capacity),
        batch_max=f.integer("batch_max", d.batch_max),
        max_retries=f.integer("max_retries", d.max_retries, minimum=0),
    )
