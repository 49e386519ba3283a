"""Shared fixtures: RSA keys (generated once per session), key rings, a Ledger opener, and
child writer processes (tests/crash_writer.py)."""

import faulthandler
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.core.keyring import KeyRing, RsaKey
from quipu.core.ledger import Ledger
from quipu.core.sync import SyncPolicy
from quipu.core.table import TableConfig

KEY_VERSION = 1
HANG_LIMIT = 300  # seconds one test may take before the run is aborted with tracebacks


@pytest.fixture(autouse=True)
def hang_guard():
    """A hung test (e.g. a close() that never returns) aborts the run with every thread's
    traceback instead of hanging it forever. Generous: no test comes near it."""
    faulthandler.dump_traceback_later(HANG_LIMIT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def rsa_private() -> rsa.RSAPrivateKey:
    """The store's signing key: one 2048-bit key for the whole session (generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_private() -> rsa.RSAPrivateKey:
    """A second, unrelated key: what a tamperer without our key could sign with."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_key(rsa_private) -> RsaKey:
    return RsaKey(KEY_VERSION, rsa_private.public_key(), rsa_private)


@pytest.fixture(scope="session")
def other_rsa_key(other_rsa_private) -> RsaKey:
    return RsaKey(KEY_VERSION, other_rsa_private.public_key(), other_rsa_private)


@pytest.fixture
def keys(rsa_key) -> KeyRing:
    """A key ring that can sign and verify checkpoints."""
    return KeyRing([rsa_key])


@pytest.fixture
def public_keys(rsa_key) -> KeyRing:
    """Our public key only: verifies, never signs (a write-only node)."""
    return KeyRing([RsaKey(rsa_key.version, rsa_key.public)])


@pytest.fixture(scope="session")
def private_pem_path(tmp_path_factory, rsa_private) -> Path:
    """The signing key as a PEM file, for child processes."""
    path = tmp_path_factory.mktemp("keys") / "signing.pem"
    path.write_bytes(
        rsa_private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def open_store(
    root: Path,
    keys: KeyRing | None = None,
    *,
    max_segment_bytes: int = 4096,
    sync: SyncPolicy | None = None,
    **kwargs,
) -> Ledger:
    """Open a Ledger with a single `logs` table of small segments.

    The default sync policy is every_n(64): it starts no group-commit timer thread, so only
    tests that ask for every_n_or_interval depend on the timer (see `hang_guard`)."""
    config = TableConfig(
        max_segment_bytes=max_segment_bytes,
        sync=sync or SyncPolicy.every_n(64),
        **{k: kwargs.pop(k) for k in ("retention",) if k in kwargs},
    )
    return Ledger.open(root, {"logs": config}, keys=keys, **kwargs)


@pytest.fixture
def open_ledger(keys) -> Callable[..., Ledger]:
    """`open_ledger(root, **options)`: open a store with the session key unless `keys=` is given."""

    def _open(root: Path, **kwargs) -> Ledger:
        kwargs.setdefault("keys", keys)
        return open_store(root, **kwargs)

    return _open


# --- child processes -------------------------------------------------------------------

WRITER = Path(__file__).with_name("crash_writer.py")
HANG_GUARD = 60.0  # seconds: turns a hung child into a failure; never a timing assertion


class Writer:
    """A running tests/crash_writer.py; its stdout and stderr go to files."""

    def __init__(self, root: Path, logdir: Path, name: str, args: tuple[str, ...]) -> None:
        self.out, self.err = logdir / f"{name}.out", logdir / f"{name}.err"
        with open(self.out, "wb") as fo, open(self.err, "wb") as fe:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(root), *args], stdout=fo, stderr=fe
            )
        self.pid = self.proc.pid

    def lines(self) -> list[str]:
        """Complete lines only: a line without its newline was cut off by a kill."""
        return self.out.read_text().split("\n")[:-1]

    def wait_for(self, prefix: str) -> str:
        """The first output line starting with `prefix`, once the child has printed it."""
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None:
                pytest.fail(
                    f"writer exited with {self.proc.returncode} before printing {prefix!r}:\n"
                    f"{self.err.read_text()}"
                )
            time.sleep(0.005)
        self.proc.kill()
        pytest.fail(f"writer printed no {prefix!r} line within {HANG_GUARD}s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL

    def acked(self) -> int:
        """The highest sequence number the child acknowledged as flushed (-1: none)."""
        acks = [int(line.split()[1]) for line in self.lines() if line.startswith("acked ")]
        return max(acks, default=-1)


@pytest.fixture
def spawn_writer(tmp_path_factory):
    """`spawn_writer(root, *args)` starts tests/crash_writer.py; stragglers are killed."""
    logdir = tmp_path_factory.mktemp("writer-logs")
    started: list[Writer] = []

    def _spawn(root: Path, *args: str) -> Writer:
        writer = Writer(root, logdir, f"run{len(started)}", tuple(args))
        started.append(writer)
        return writer

    yield _spawn
    for writer in started:
        if writer.alive():
            writer.proc.kill()
            writer.proc.wait()
