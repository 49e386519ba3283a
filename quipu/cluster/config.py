"""cluster.yaml: what `quipu-cluster up` starts, read strictly (docs/cluster.md).

Every mistake stops the command with one line naming the key path
(`cluster.yaml: shards[1].url: expected http://HOST:PORT`) before anything is started or
generated, for the same reason the shard's own config is strict: a typo must not quietly
become a default. Relative paths are taken from the file's directory, so the cluster is
the same whichever directory `up` is run from. The sections passed on to every shard
(`store`, `shard`) are checked by the shard's own config loader, so the two never disagree
about what is valid.
"""

import contextlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quipu.core.errors import BadInput
from quipu.router.shard_map import ShardInfo
from quipu.shard.config import load_config, parse_address, read_config_file
from quipu.shard.config_fields import Fields, type_name
from quipu.shard.permissions import PermissionPolicy

VERSION = 1
TOP_LEVEL = (
    *("version", "seed", "data_dir", "shards", "router", "ingest", "keys", "tokens"),
    *("store", "shard", "limits"),
)
# The shard config sections a cluster may set for every shard (docs/config.md); `store.root`
# is per shard, and `listen`, `keys` and `auth` are the supervisor's.
STORE_KEYS = (
    *("sync_policy", "max_segment_bytes", "retention_days", "retention_max_bytes"),
    *("plaintext_cache", "access_log", "access_retention_days"),
)
SHARD_SECTIONS = ("verify", "health", "idempotency", "pipeline")
DEFAULT_GRANTS = {"admin": ["emit", "query", "administer"], "auditor": ["query"], "service": ["emit"]}
ADMIN_ROLE = "admin"  # the role of the admin token a first `up` generates
_URL = re.compile(r"http://(?P<address>[^/?#\s]+)")


@dataclass(frozen=True)
class ShardEntry:
    """A shard as cluster.yaml names it; `where` is its key path for messages."""

    info: ShardInfo
    root: Path | None  # None: <data_dir>/<id>
    where: str


@dataclass(frozen=True)
class KeyFiles:
    hmac_key_file: Path
    public_key_pem_file: Path
    private_key_pem_file: Path

    def as_shard_section(self) -> dict[str, str]:
        return {name: str(path) for name, path in vars(self).items()}


@dataclass(frozen=True)
class ClusterConfig:
    path: Path  # absolute
    shown: str  # the path as the user named it: what messages say
    seed: str
    data_dir: Path
    shards: tuple[ShardEntry, ...]
    router_listen: tuple[str, int]
    anchor_interval_secs: float
    anchor_export_url: str | None
    ingest_listen: tuple[str, int]
    ingest_workers: int
    keys: KeyFiles
    tokens_file: Path
    grants: Mapping[str, list[str]]
    max_concurrent_queries: int | None
    store: Mapping[str, object]  # passed to every shard's `store` section
    shard_sections: Mapping[str, object]  # verify, health, idempotency, pipeline
    max_body_bytes: int

    @property
    def run_dir(self) -> Path:
        """Per-up files: process configs, logs, pid files. Nothing in it is a secret."""
        return self.data_dir / "run"

    @property
    def shard_map_path(self) -> Path:
        return self.data_dir / "shards.json"

    @property
    def shard_map_lock(self) -> Path:
        return self.data_dir / "shards.lock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "cluster.pid"

    @property
    def pids_file(self) -> Path:
        return self.run_dir / "pids.json"

    @property
    def supervisor_log(self) -> Path:
        return self.run_dir / "cluster.log"

    @property
    def anchors_log(self) -> Path:
        return self.data_dir / "anchors.log"

    @property
    def public_url(self) -> str:
        return address_url(self.ingest_listen)

    @property
    def router_url(self) -> str:
        return address_url(self.router_listen)

    def shard_root(self, shard_id: str) -> Path:
        """A shard's store: its `root` in cluster.yaml, else <data_dir>/<id> (also for the
        shards a grow added, which cluster.yaml does not list)."""
        for entry in self.shards:
            if entry.info.id == shard_id and entry.root is not None:
                return entry.root
        return self.data_dir / shard_id


def address_url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def url_address(url: str) -> tuple[str, int]:
    """(host, port) of an `http://HOST:PORT` URL that ShardInfo accepted."""
    return parse_address(url.removeprefix("http://").removeprefix("https://"), url, min_port=1)


def load_cluster_config(path: Path) -> ClusterConfig:
    """Read and check the whole file; BadInput `<file>: <key path>: <problem>` otherwise."""
    shown = str(path)
    try:
        return _read(Path(path).absolute(), shown)
    except BadInput as err:
        message = str(err)  # the file reader's own messages already name the file
        raise BadInput(message if f"config file {shown}" in message else f"{shown}: {message}") from err


def _read(path: Path, shown: str) -> ClusterConfig:
    with contextlib.suppress(OSError):  # unreadable: the reader below says so
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise BadInput("the file is empty; docs/cluster.md describes every key (start from cluster.yaml)")
    top = Fields(read_config_file(Path(shown)), "", TOP_LEVEL)  # its messages name the file as given
    version = top.integer("version")
    if version != VERSION:
        raise BadInput(f"version: this file is version {version}; this release reads version {VERSION}")
    base = path.parent
    data_dir = base / top.text("data_dir", "./data")
    router = Fields(top.raw("router"), "router", ("listen", "anchor_interval_secs", "anchor_export_url"))
    ingest = Fields(top.raw("ingest"), "ingest", ("listen", "workers"))
    tokens = Fields(top.raw("tokens"), "tokens", ("file", "grants", "max_concurrent_queries"))
    limits = Fields(top.raw("limits"), "limits", ("max_body_bytes",))
    config = ClusterConfig(
        path=path,
        shown=shown,
        seed=_seed(top),
        data_dir=data_dir,
        shards=_shards(top.raw("shards"), base),
        router_listen=parse_address(router.text("listen"), router.path("listen"), min_port=1),
        # An anchor is what makes a rolled-back shard visible: it cannot be switched off.
        anchor_interval_secs=router.positive("anchor_interval_secs", 300.0),
        anchor_export_url=_export_url(router),
        ingest_listen=parse_address(ingest.text("listen"), ingest.path("listen"), min_port=1),
        ingest_workers=ingest.integer("workers", 2),
        keys=_keys(top.raw("keys"), base, data_dir),
        tokens_file=base / tokens.text("file", str(data_dir / "tokens.yaml")),
        grants=_grants(tokens),
        max_concurrent_queries=tokens.optional_integer("max_concurrent_queries", 4),
        store=_store(top.raw("store")),
        shard_sections=_shard_sections(top.raw("shard")),
        max_body_bytes=limits.integer("max_body_bytes", 1 << 20),
    )
    _check_ports(config)
    return config


def _seed(top: Fields) -> str:
    seed = top.text("seed")
    if len(seed) > 128 or not seed.isprintable():
        raise BadInput("seed: expected 1-128 printable characters")
    return seed


def _shards(obj: object, base: Path) -> tuple[ShardEntry, ...]:
    if not isinstance(obj, list) or not obj:
        raise BadInput(f"shards: expected a non-empty list of {{id, url}}, got {type_name(obj)}")
    entries = []
    for n, item in enumerate(obj):
        f = Fields(item, f"shards[{n}]", ("id", "url", "root"))
        shard_id = f.text("id")
        url = f.text("url")
        match = _URL.fullmatch(url)
        if not match:
            raise BadInput(f"{f.path('url')}: expected http://HOST:PORT")
        parse_address(match["address"], f.path("url"), min_port=1)
        info = _shard_info(shard_id, url, f)
        root = f.optional_file_path("root", base)
        entries.append(ShardEntry(info, root, f.where))
    for key in ("id", "url"):
        values = [getattr(e.info, key) for e in entries]
        for n, value in enumerate(values):
            if value in values[:n]:
                raise BadInput(f"shards[{n}].{key}: the same {key} as shards[{values.index(value)}]")
    return tuple(entries)


def _shard_info(shard_id: str, url: str, f: Fields) -> ShardInfo:
    """ShardInfo decides what an id and a URL may be; its complaint gets our key path."""
    try:
        ShardInfo(shard_id, "http://127.0.0.1:1")
    except BadInput as err:
        raise BadInput(f"{f.path('id')}: expected shard-NNNN (4 to 8 digits)") from err
    try:
        return ShardInfo(shard_id, url)
    except BadInput as err:
        raise BadInput(f"{f.path('url')}: expected http://HOST:PORT") from err


def _export_url(router: Fields) -> str | None:
    url = router.optional_text("anchor_export_url")
    if url is not None and not re.fullmatch(r"https?://\S+", url):
        raise BadInput(f"{router.path('anchor_export_url')}: expected an http:// or https:// URL")
    return url


def _keys(obj: object, base: Path, data_dir: Path) -> KeyFiles:
    names = ("hmac_key_file", "public_key_pem_file", "private_key_pem_file")
    defaults = ("keys/hmac.key", "keys/rsa.pub.pem", "keys/rsa.pem")
    f = Fields(obj, "keys", names)
    paths = {
        name: f.optional_file_path(name, base) or data_dir / default
        for name, default in zip(names, defaults, strict=True)
    }
    return KeyFiles(**paths)


def _grants(tokens: Fields) -> dict[str, list[str]]:
    grants = tokens.raw("grants")
    if grants is None:
        return {role: list(actions) for role, actions in DEFAULT_GRANTS.items()}
    if not isinstance(grants, Mapping) or not grants:
        raise BadInput(
            f"{tokens.path('grants')}: expected an object of role -> [actions], got {type_name(grants)}"
        )
    PermissionPolicy.from_json(grants, tokens.path("grants"))
    return {str(role): list(actions) for role, actions in grants.items()}


def _store(obj: object) -> dict[str, object]:
    if isinstance(obj, Mapping) and "root" in obj:
        raise BadInput("store.root: a shard's store is set per shard (shards[N].root), not here")
    Fields(obj, "store", STORE_KEYS)  # unknown keys named here, values checked below
    store = dict(obj) if obj else {}
    _check_with_shard_loader({"store": {"root": "placeholder", **store}}, prefix="")
    return store


def _shard_sections(obj: object) -> dict[str, object]:
    f = Fields(obj, "shard", SHARD_SECTIONS)
    sections = {name: f.raw(name) for name in SHARD_SECTIONS if f.raw(name) is not None}
    _check_with_shard_loader({"store": {"root": "placeholder"}, **sections}, prefix="shard.")
    return sections


def _check_with_shard_loader(sections: dict[str, object], prefix: str) -> None:
    """Load a shard config made of these sections, so cluster.yaml and a shard agree on
    what is valid; the shard loader's key path is prefixed with where it sits here."""
    with tempfile.TemporaryDirectory(prefix="quipu-cluster-check-") as tmp:
        probe = Path(tmp) / "shard.json"
        probe.write_text(json.dumps({"listen": "127.0.0.1:0", **sections}, default=str))
        try:
            load_config(probe)
        except BadInput as err:
            raise BadInput(f"{prefix}{err}") from err


def _check_ports(config: ClusterConfig) -> None:
    """Two processes of one file on one port would fail at start, half the cluster up."""
    seen: dict[tuple[str, int], str] = {}
    claims = [(url_address(e.info.url), f"{e.where}.url") for e in config.shards]
    claims += [(config.router_listen, "router.listen"), (config.ingest_listen, "ingest.listen")]
    for address, where in claims:
        for (host, port), other in seen.items():
            if port == address[1] and (host == address[0] or "0.0.0.0" in (host, address[0])):
                raise BadInput(f"{where}: port {port} is also used by {other}")
        seen[address] = where
