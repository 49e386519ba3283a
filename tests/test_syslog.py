"""The syslog mirror over real UDP sockets, each datagram checked by a strict RFC 5424 parser."""

import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from quipu.core.event import AuditEvent, EntityInput, TargetSpec
from quipu.core.values import Content
from quipu.shard.syslog import MAX_DATAGRAM, SyslogMirror, format_rfc5424

SECRET = "s3cr3t-content-marker-7f1c"
RECV_TIMEOUT = 5.0  # only bounds a failure; loopback datagrams arrive at once

# --- A strict RFC 5424 parser, written from the ABNF in §6 -------------------------------
_PRINTUS = r"[\x21-\x7e]"
_SD_NAME = r"[!#-<>-\\^-~]{1,32}"  # PRINTUSASCII except '=', SP, ']' and '"'
_PARAM_VALUE = r'(?:[^"\\\]]|\\["\\\]])*'  # '"', '\' and ']' only ever appear escaped
_TIMESTAMP = (
    r"-|\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"T(?:[01]\d|2[0-3]):[0-5]\d:(?:[0-5]\d|60)(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
)
_HEADER = re.compile(
    r"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
    rf"(?P<timestamp>{_TIMESTAMP}) "
    rf"(?P<hostname>-|{_PRINTUS}{{1,255}}) "
    rf"(?P<app_name>-|{_PRINTUS}{{1,48}}) "
    rf"(?P<procid>-|{_PRINTUS}{{1,128}}) "
    rf"(?P<msgid>-|{_PRINTUS}{{1,32}}) "
)
_SD_PARAM = re.compile(rf' (?P<name>{_SD_NAME})="(?P<value>{_PARAM_VALUE})"')
_SD_ELEMENT = re.compile(rf"\[(?P<id>{_SD_NAME})(?P<params>(?: {_SD_NAME}=\"{_PARAM_VALUE}\")*)\]")
_UNESCAPE = re.compile(r'\\(["\\\]])')


def parse_rfc5424(datagram: bytes) -> dict:
    """Header fields, {sd_id: {param: value}} and msg; raises AssertionError if not RFC 5424."""
    text = datagram.decode("utf-8")  # strict: the message must be valid UTF-8
    header = _HEADER.match(text)
    assert header, f"bad HEADER: {text[:120]!r}"
    out = header.groupdict()
    assert 0 <= int(out["pri"]) <= 191
    pos, sd = header.end(), {}
    if text.startswith("-", pos):
        pos += 1
    else:
        while element := _SD_ELEMENT.match(text, pos):
            params = {
                m["name"]: _UNESCAPE.sub(r"\1", m["value"]) for m in _SD_PARAM.finditer(element["params"])
            }
            assert element["id"] not in sd, "an SD-ID appears at most once"
            sd[element["id"]] = params
            pos = element.end()
        assert sd, f"bad STRUCTURED-DATA at {text[pos : pos + 80]!r}"
    rest = text[pos:]
    assert rest == "" or rest.startswith(" "), f"junk after STRUCTURED-DATA: {rest[:40]!r}"
    out["sd"], out["msg"] = sd, rest[1:] if rest else None
    return out


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(RECV_TIMEOUT)
    yield sock
    sock.close()


def _event(
    url: str, tenant: str | None = "acme", occurred_at: int | None = 1_714_564_800_123_456
) -> AuditEvent:
    return AuditEvent(
        actor_type="user",
        actor=EntityInput('alice "the admin"'),
        method="PUT",
        url=url,
        content=Content.text_(f"body with {SECRET}"),
        targets=(TargetSpec("doc", EntityInput("42")), TargetSpec("folder", EntityInput("a,b%c"))),
        occurred_at=occurred_at,
        tenant=tenant,
    )


# --- tests --------------------------------------------------------------------------------


def test_mirrored_events_parse_as_rfc5424_and_round_trip(receiver):
    urls = ['/api/docs/42?q="x"', "/api/a\\b]c", "/api/plain/ü"]
    events = [_event(u) for u in urls] + [_event("/no/tenant", tenant=None, occurred_at=None)]
    mirror = SyslogMirror(receiver.getsockname(), app_name="quipu-test", hostname="shard-1").start()
    before = time.time()
    for i, event in enumerate(events):
        mirror.offer(event, f"log-{i}")
    after = time.time()
    mirror.close()
    datagrams = [receiver.recv(65535) for _ in events]
    assert mirror.sent == len(events) and mirror.dropped == 0

    for i, (event, datagram) in enumerate(zip(events, datagrams, strict=True)):
        assert SECRET.encode() not in datagram
        msg = parse_rfc5424(datagram)
        assert (msg["pri"], msg["version"], msg["msgid"]) == ("110", "1", "audit")
        assert (msg["hostname"], msg["app_name"]) == ("shard-1", "quipu-test")
        assert msg["procid"].isdigit()
        expected = {
            "log_id": f"log-{i}",
            "actor_type": "user",
            "actor_id": 'alice "the admin"',
            "method": "PUT",
            "url": event.url,
            "targets": "doc:42,folder:a%2Cb%25c",
        }
        if event.tenant is not None:
            expected["tenant"] = event.tenant
        assert msg["sd"] == {"quipu@32473": expected}
        assert msg["msg"] == f"PUT {event.url}"
    assert parse_rfc5424(datagrams[0])["timestamp"] == "2024-05-01T12:00:00.123456Z"
    # occurred_at None: the time of offer, in UTC with microseconds.
    stamp = parse_rfc5424(datagrams[-1])["timestamp"]
    offered_at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 1 <= offered_at <= after + 1


def test_full_backlog_drops_instead_of_blocking(receiver):
    # `receiver` is never read here: a port nobody reads.
    offered = 10_000
    mirror = SyslogMirror(receiver.getsockname(), capacity=10).start()
    event = _event("/api/docs/1")
    for i in range(offered):
        mirror.offer(event, f"log-{i}")
    assert mirror.backlog <= 10
    mirror.close()
    assert mirror.dropped > 0
    assert mirror.sent + mirror.dropped + mirror.backlog == offered


def test_close_sends_what_was_queued_before_start(receiver):
    mirror = SyslogMirror(receiver.getsockname())
    for i in range(5):
        mirror.offer(_event(f"/api/docs/{i}"), "log")
    mirror.start().close()
    assert (mirror.sent, mirror.dropped) == (5, 0)
    assert [parse_rfc5424(receiver.recv(65535))["msg"] for _ in range(5)] == [
        f"PUT /api/docs/{i}" for i in range(5)
    ]


def test_offer_after_close_is_dropped(receiver):
    mirror = SyslogMirror(receiver.getsockname()).start()
    mirror.close()
    mirror.offer(_event("/late"), "log")
    assert (mirror.sent, mirror.dropped, mirror.backlog) == (0, 1, 0)


def test_send_errors_are_counted_as_dropped():
    # Broadcast without SO_BROADCAST fails with EACCES on every send: a real OSError.
    mirror = SyslogMirror(("255.255.255.255", 9)).start()
    for _ in range(3):
        mirror.offer(_event("/x"), "log")
    mirror.close()
    assert (mirror.sent, mirror.dropped) == (0, 3)


def test_long_url_is_truncated_to_fit_the_datagram():
    url = "/api/" + '"\\]ü' * 2000  # escapes and multi-byte characters near the cut
    data = format_rfc5424(_event(url), "log-1", "quipu", "host", 1, 0)
    assert len(data) <= MAX_DATAGRAM
    msg = parse_rfc5424(data)
    params = msg["sd"]["quipu@32473"]
    assert params["truncated"] == "url"
    assert url.startswith(params["url"]) and len(params["url"]) > 100
    assert msg["msg"] == f"PUT {params['url']}"
    assert params["targets"] == "doc:42,folder:a%2Cb%25c"


def test_many_targets_are_cut_at_whole_entries():
    event = AuditEvent(
        actor_type="user",
        actor=EntityInput("alice"),
        method="DELETE",
        url="/api/bulk",
        content=Content.text_(SECRET),
        targets=tuple(TargetSpec("doc", EntityInput(f"{i:03d}" + "x" * 200)) for i in range(64)),
    )
    data = format_rfc5424(event, "log-1", "quipu", "host", 1, 0)
    assert len(data) <= MAX_DATAGRAM and SECRET.encode() not in data
    params = parse_rfc5424(data)["sd"]["quipu@32473"]
    assert params["truncated"] == "url,targets"
    entries = params["targets"].split(",")
    assert 0 < len(entries) < 64
    assert entries == [f"doc:{i:03d}" + "x" * 200 for i in range(len(entries))]


def test_header_fields_are_sanitized_and_bounded():
    data = format_rfc5424(_event("/x"), "log", "my app ü" + "a" * 100, "host name\n" + "h" * 300, 7, 0)
    msg = parse_rfc5424(data)
    assert msg["hostname"] == ("host_name_" + "h" * 300)[:255]
    assert msg["app_name"] == ("my_app_" + "_" + "a" * 100)[:48]
    assert msg["procid"] == "7"
    assert parse_rfc5424(format_rfc5424(_event("/x"), "log", "", "", 7, 0))["hostname"] == "-"


def test_invalid_port_is_refused():
    with pytest.raises(ValueError):
        SyslogMirror(("127.0.0.1", 70000))


def test_the_strict_parser_rejects_an_unescaped_bracket():
    """Guards the guard: the round-trip tests mean something only if the parser is strict."""
    good = format_rfc5424(_event("/a]b"), "log", "quipu", "host", 1, 0)
    parse_rfc5424(good)
    with pytest.raises(AssertionError):
        parse_rfc5424(good.replace(b"\\]", b"]"))
