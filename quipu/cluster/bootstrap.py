"""What a first `up` makes: the key files and the token file cluster.yaml names but that do
not exist yet, and shards.json.

So the shipped cluster.yaml works on a fresh machine, while a production file that points
at existing keys generates nothing. A key is generated only while the cluster has no data
(no shards.json): a missing key next to existing stores is a lost key, and a new one would
silently fail to read or verify what the old one wrote, so that is an error that says to
restore it. Everything here is checked before anything is written (`check`), so a refused
`up` changes nothing.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.cluster.config import ADMIN_ROLE, ClusterConfig
from quipu.cluster.tokens import issue_token, read_tokens, token_entry
from quipu.core.errors import BadInput
from quipu.core.files import fsync_dir
from quipu.router.shard_map import ShardMap
from quipu.shard.auth import ANY_TENANT
from quipu.shard.config import load_config

HMAC_KEY_BYTES = 32
RSA_BITS = 3072


@dataclass
class FirstRun:
    """What `generate` made; `admin_token` is shown once and then dropped."""

    generated: list[Path] = field(default_factory=list)
    admin_token: str | None = None


def is_fresh(config: ClusterConfig) -> bool:
    return not config.shard_map_path.exists()


def planned_map(config: ClusterConfig) -> ShardMap:
    """shards.json once it exists (it is then the truth: grows live only there), else the
    map a first `up` will write from cluster.yaml."""
    if config.shard_map_path.exists():
        shard_map = ShardMap.load(config.shard_map_path)
        if shard_map.seed != config.seed:
            raise BadInput(
                f"{config.shown}: seed: {config.shard_map_path} was created with another seed; "
                "the seed never changes (it would move every tenant): put the original back"
            )
        return shard_map
    return ShardMap.create(config.seed, [entry.info for entry in config.shards])


def check(config: ClusterConfig) -> None:
    """Refuse, before anything is written, what `generate` could not fix."""
    keys = config.keys
    fresh = is_fresh(config)
    missing = {name for name, path in vars(keys).items() if not path.exists()}
    if missing and not fresh:
        name = sorted(missing)[0]
        raise BadInput(
            f"{config.shown}: keys.{name}: {getattr(keys, name)} is missing, but the cluster already "
            f"has data ({config.shard_map_path}); restore the key from your backup: a new key could "
            "not read or verify what the old one protected and signed"
        )
    if "private_key_pem_file" in missing and "public_key_pem_file" not in missing:
        raise BadInput(
            f"{config.shown}: keys.private_key_pem_file: {keys.private_key_pem_file} is missing while "
            f"its public key {keys.public_key_pem_file} exists; restore it, or remove both to generate a pair"
        )
    present = {name: str(path) for name, path in vars(keys).items() if name not in missing}
    if present:
        _check_keys_load(present, config.shown)
    if config.tokens_file.exists():
        try:
            read_tokens(config.tokens_file)
        except BadInput as err:
            raise BadInput(f"{config.shown}: tokens.file: {err}") from err
    elif ADMIN_ROLE not in config.grants or len(config.grants[ADMIN_ROLE]) < 3:
        raise BadInput(
            f"{config.shown}: tokens.grants: the admin token a first up generates needs a role "
            f"{ADMIN_ROLE!r} granted emit, query and administer"
        )


def _check_keys_load(present: dict[str, str], shown: str) -> None:
    """Existing key files are read by the shard's own loader, so a broken or mismatched
    one stops `up` here and not in three shard logs."""
    with tempfile.TemporaryDirectory(prefix="quipu-cluster-check-") as tmp:
        probe = Path(tmp) / "shard.json"
        probe.write_text(json.dumps({"listen": "127.0.0.1:0", "store": {"root": tmp}, "keys": present}))
        try:
            load_config(probe)
        except BadInput as err:
            raise BadInput(f"{shown}: {err}") from err


def generate(config: ClusterConfig) -> FirstRun:
    """Make whatever is missing (after `check`); shards.json last, since its existence is
    what marks the cluster as created."""
    done = FirstRun()
    keys = config.keys
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not keys.hmac_key_file.exists():
        _write_secret(keys.hmac_key_file, os.urandom(HMAC_KEY_BYTES))
        done.generated.append(keys.hmac_key_file)
    if not keys.private_key_pem_file.exists():
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        _write_secret(keys.private_key_pem_file, _private_pem(private))
        done.generated.append(keys.private_key_pem_file)
    if not keys.public_key_pem_file.exists():  # derived: the private key is the pair
        private = serialization.load_pem_private_key(keys.private_key_pem_file.read_bytes(), None)
        _write_file(keys.public_key_pem_file, _public_pem(private), 0o644)
        done.generated.append(keys.public_key_pem_file)
    if not config.tokens_file.exists():
        done.admin_token, _ = issue_token(config.tokens_file, token_entry(ADMIN_ROLE, ANY_TENANT))
        done.generated.append(config.tokens_file)
    if not config.shard_map_path.exists():
        planned_map(config).save(config.shard_map_path)
        done.generated.append(config.shard_map_path)
    return done


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_secret(path: Path, data: bytes) -> None:
    """Owner-only from the first byte (mode set at create), in an owner-only directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_file(path, data, 0o600)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
