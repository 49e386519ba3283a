"""A best-effort RFC 5424 mirror of written audit events to a SIEM over UDP.

The store is the system of record; the SIEM gets a skeleton copy (who, what, where, which
targets) and never the event's `content`, which may hold personal data the store encrypts.
The mirror must never slow or break the write path: `offer` only appends to a bounded
backlog (dropping and counting when it is full), and one daemon thread formats and sends.
UDP gives no delivery guarantee anyway, so a send error is counted, not retried.

Message layout (RFC 5424 §6):

    <110>1 2024-05-01T12:00:00.000000Z host quipu 4242 audit [quipu@32473 log_id="..."
    tenant="..." actor_type="..." actor_id="..." method="PUT" url="/api/docs/42"
    targets="doc:42,user:7"] PUT /api/docs/42

PRI 110 = facility 13 (log audit) * 8 + severity 6 (informational). 32473 is the private
enterprise number RFC 5612 reserves for documentation. In `targets`, each entry is
`type:id`; type names never hold ':' or ',', and '%' and ',' in ids are percent-encoded
so the list splits unambiguously. A datagram is capped at MAX_DATAGRAM bytes: url, then
targets, then actor_id, then log_id are shortened until it fits, and a
`truncated="url,..."` parameter names what was cut.
"""

import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from quipu.core.audit_store import rfc3339
from quipu.core.event import AuditEvent

PRI = "<110>"  # facility 13 (log audit) * 8 + severity 6 (informational), RFC 5424 §6.2.1
VERSION = "1"
MSGID = "audit"
SD_ID = "quipu@32473"  # RFC 5612 documentation PEN
NILVALUE = "-"
MAX_DATAGRAM = 2048  # RFC 5426 §3.2: receivers should take 2048 octets; larger may be cut
MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID = 255, 48, 128  # RFC 5424 §6 ABNF
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_PARAM_SPECIAL = re.compile(r'(["\\\]])')
# The order in which over-long values are shortened: the url is the usual culprit and the
# least needed to correlate with the store, which has it in full.
_SHRINK_ORDER = ("url", "targets", "actor_id", "log_id")
_SEND_TIMEOUT = 1.0  # seconds a blocked sendto may take before the line counts as dropped


def header_field(value: str, limit: int) -> str:
    """A PRINTUSASCII header field (RFC 5424 §6.2): other characters become '_', at most
    `limit` characters, NILVALUE when empty."""
    return _NOT_PRINTUSASCII.sub("_", value)[:limit] or NILVALUE


def escape_param_value(value: str) -> str:
    """RFC 5424 §6.3.3: '"', '\\' and ']' are escaped with a backslash inside PARAM-VALUE."""
    return _PARAM_SPECIAL.sub(r"\\\1", value)


def rfc3339_micros(micros: int) -> str:
    """UTC micros as RFC 3339 (the store's rendering), or NILVALUE past year 9999."""
    try:
        return rfc3339(micros)
    except OverflowError:
        return NILVALUE


def _target_list(event: AuditEvent) -> str:
    return ",".join(
        f"{t.entity_type}:{t.input.entity_id.replace('%', '%25').replace(',', '%2C')}" for t in event.targets
    )


def format_rfc5424(
    event: AuditEvent,
    log_id: str,
    app_name: str,
    hostname: str,
    procid: int,
    now_micros: int,
    max_bytes: int = MAX_DATAGRAM,
) -> bytes:
    """One RFC 5424 message for a written event, without its content, at most `max_bytes`
    (given the header and the fixed fields fit, which they do for MAX_DATAGRAM)."""
    header = " ".join(
        (
            PRI + VERSION,
            rfc3339_micros(now_micros if event.occurred_at is None else event.occurred_at),
            header_field(hostname, MAX_HOSTNAME),
            header_field(app_name, MAX_APP_NAME),
            header_field(str(procid), MAX_PROCID),
            MSGID,
        )
    )
    params: dict[str, str] = {"log_id": log_id}
    if event.tenant is not None:
        params["tenant"] = event.tenant
    params |= {
        "actor_type": event.actor_type,
        "actor_id": event.actor.entity_id,
        "method": event.method,
        "url": event.url,
        "targets": _target_list(event),
    }

    def build(values: dict[str, str], cut: list[str]) -> bytes:
        sd = " ".join(f'{k}="{escape_param_value(v)}"' for k, v in values.items())
        if cut:
            sd += f' truncated="{",".join(cut)}"'
        # MSG-ANY (no BOM): a short human line; the url here is the possibly shortened one.
        line = f"{header} [{SD_ID} {sd}] {values['method']} {values['url']}"
        return line.encode("utf-8", "replace")

    cut: list[str] = []
    data = build(params, cut)
    for name in _SHRINK_ORDER:
        if len(data) <= max_bytes:
            break
        cut.append(name)
        params[name] = _shortened(params, name, lambda p: len(build(p, cut)) <= max_bytes)
        data = build(params, cut)
    return data


def _shortened(params: dict[str, str], name: str, fits: Callable[[dict[str, str]], bool]) -> str:
    """The longest prefix of params[name] with which `fits(params)` holds ("" if none).

    A string is cut at a character, so UTF-8 and the escapes stay valid; the target list
    at an entry, so no half id is mirrored."""
    value = params[name]
    parts: list[str] = value.split(",") if name == "targets" else list(value)
    sep = "," if name == "targets" else ""
    lo, hi = 0, len(parts)  # invariant: the first `lo` parts fit (or lo == 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits({**params, name: sep.join(parts[:mid])}):
            lo = mid
        else:
            hi = mid - 1
    return sep.join(parts[:lo])


class SyslogMirror:
    """Mirrors written events to `address` (host, port) over UDP, best effort.

    `sent + dropped + backlog` equals the number of offers, except for the one line the
    sender may have in flight.
    """

    def __init__(
        self,
        address: tuple[str, int],
        app_name: str = "quipu",
        capacity: int = 10_000,
        hostname: str | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        # getaddrinfo would silently wrap an out-of-range port (70000 -> 4464).
        if not 1 <= address[1] <= 65535:
            raise ValueError(f"syslog port must be 1..65535, got {address[1]}")
        self.address = address
        self.app_name = app_name
        self.capacity = capacity
        self.hostname = socket.gethostname() if hostname is None else hostname
        self._cond = threading.Condition()
        self._backlog: deque[tuple[AuditEvent, str, int]] = deque()
        self._sent = 0
        self._dropped = 0
        self._closing = False
        self._abandon = False
        self._thread: threading.Thread | None = None

    def start(self) -> "SyslogMirror":
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("this SyslogMirror was already started; build a new one")
            self._thread = threading.Thread(target=self._run, name="quipu-syslog", daemon=True)
        self._thread.start()
        return self

    def offer(self, event: AuditEvent, log_id: str) -> None:
        """Queue one written event; drops (and counts) it when the backlog is full or closed."""
        # The clock is read here, not when sending, so a backlog does not shift timestamps.
        now_micros = time.time_ns() // 1000
        with self._cond:
            if self._closing or len(self._backlog) >= self.capacity:
                self._dropped += 1
                return
            self._backlog.append((event, log_id, now_micros))
            self._cond.notify()

    @property
    def sent(self) -> int:
        with self._cond:
            return self._sent

    @property
    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    @property
    def backlog(self) -> int:
        with self._cond:
            return len(self._backlog)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for at most `timeout` seconds, then count the rest as dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            if self._thread is None or self._thread.is_alive():
                # Never started, or the SIEM path is too slow: give up on what is left.
                self._abandon = True
                self._dropped += len(self._backlog)
                self._backlog.clear()
                self._cond.notify_all()

    def _run(self) -> None:
        """The sender: one line at a time until closed and drained (or abandoned)."""
        sock: socket.socket | None = None
        try:
            while (item := self._next()) is not None:
                try:
                    if sock is None:
                        # Opened here, not in start(): a DNS outage must not stop a shard.
                        sock, sockaddr = _open_udp(self.address)
                    sock.sendto(self._format(*item), sockaddr)
                    ok = True
                except OSError:
                    ok = False
                with self._cond:
                    if ok:
                        self._sent += 1
                    else:
                        self._dropped += 1
        finally:
            if sock is not None:
                sock.close()

    def _next(self) -> tuple[AuditEvent, str, int] | None:
        """Wait for the next queued line; None once closing with nothing left, or abandoned."""
        with self._cond:
            while not self._backlog and not self._closing:
                self._cond.wait()
            if not self._backlog or self._abandon:
                return None
            return self._backlog.popleft()

    def _format(self, event: AuditEvent, log_id: str, now_micros: int) -> bytes:
        return format_rfc5424(event, log_id, self.app_name, self.hostname, os.getpid(), now_micros)


def _open_udp(address: tuple[str, int]) -> tuple[socket.socket, tuple]:
    """A UDP socket for `address` (IPv4 or IPv6, as it resolves) and the resolved sockaddr."""
    family, _, _, _, sockaddr = socket.getaddrinfo(*address, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    # A blocked send (full socket buffer) counts as a drop rather than stalling close().
    sock.settimeout(_SEND_TIMEOUT)
    return sock, sockaddr
