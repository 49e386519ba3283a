"""The cluster's token file: digests of the user tokens the router and ingest workers accept.

Same shape as a shard config's `auth.tokens` (`"sha256:<hex>": {role, tenant, expires}`),
so the file is never a credential. A token is printed once, when it is made, and only its
digest is written. The fronts re-read the file when it changes (quipu.shard.token_file),
so a new token works without a restart; the file is therefore only ever replaced whole
(temp file + fsync + rename), never written in place, and writers take an flock on its
directory so two `quipu-cluster token` runs cannot lose each other's line.
"""

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from quipu.core.errors import BadInput
from quipu.core.event import validate_tenant
from quipu.core.files import fsync_dir
from quipu.shard.auth import ANY_TENANT, TokenTable, new_token, token_digest
from quipu.shard.config import read_config_file

HEADER = (
    "# quipu-cluster tokens: the sha256 digest of each token, never a token (docs/cluster.md).\n"
    "# Add one with `quipu-cluster token --tenant T --role R`; delete its line to revoke it.\n"
)


def token_entry(role: str, tenant: str, expires: str | int | None = None) -> dict[str, object]:
    """One entry, checked by the same parser the fronts use."""
    if tenant != ANY_TENANT:
        validate_tenant(tenant, "--tenant")
    entry: dict[str, object] = {"role": role, "tenant": tenant}
    if expires is not None:
        entry["expires"] = expires
    TokenTable.from_json({token_digest("probe"): entry}, "token")
    return entry


def read_tokens(path: Path) -> dict[str, object]:
    """The file's entries, checked; BadInput naming the file when it is not a token table."""
    data = read_config_file(path)
    TokenTable.from_json(data, str(path))
    return dict(data)


def issue_token(path: Path, entry: Mapping[str, object]) -> tuple[str, str]:
    """Add a fresh token with `entry` to the file (created if missing): (token, config line).
    The token is returned for printing once; the file gets only its digest."""
    token = new_token()
    digest = token_digest(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(path.parent):
        old = read_tokens(path) if path.exists() else {}
        text = path.read_text(encoding="utf-8") if path.exists() else HEADER
        _replace(path, _with_entry(path, text, old, digest, dict(entry)), {**old, digest: dict(entry)})
    return token, f"{json.dumps(digest)}: {json.dumps(dict(entry))}"


def _with_entry(path: Path, text: str, old: Mapping[str, object], digest: str, entry: dict) -> str:
    """The new file text: one line appended, so the operator's comments survive (YAML);
    a JSON file is written out whole."""
    if path.suffix.lower() == ".json":
        return json.dumps({**old, digest: entry}, indent=2) + "\n"
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}{json.dumps(digest)}: {json.dumps(entry)}\n"  # a JSON flow mapping is YAML


def _replace(path: Path, text: str, expected: Mapping[str, object]) -> None:
    """Write by temp + fsync + rename, after parsing what was written: a file whose last
    line cannot simply be appended to (a flow-style `{}` file) is written out whole."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        _write_synced(tmp, text)
        if _parsed(tmp) != expected:
            _write_synced(
                tmp, HEADER + "".join(f"{json.dumps(k)}: {json.dumps(v)}\n" for k, v in expected.items())
            )
            if _parsed(tmp) != expected:
                raise BadInput(f"{path}: could not write the token file back unchanged; nothing was added")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _parsed(path: Path) -> object:
    try:
        return dict(read_config_file(path))
    except BadInput:
        return None


def _write_synced(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """flock on the directory itself: no lock file to leave behind, and the kernel drops
    it when the holder dies."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
