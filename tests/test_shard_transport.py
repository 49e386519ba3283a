"""A real shard's transports: TLS from cert/key files, and the syslog mirror reaching a real
UDP socket with RFC 5424 lines that never carry the event's content."""

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from shard_proc import ShardProcess, append_request
from test_syslog import parse_rfc5424

SECRET = "content-marker-7f3a"


def _self_signed(directory: Path) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {"cert_pem_file": str(directory / "cert.pem"), "key_pem_file": str(directory / "key.pem")}


def test_shard_serves_https_from_cert_and_key_files(tmp_path: Path) -> None:
    tls = _self_signed(tmp_path / "tls")
    with ShardProcess.start(tmp_path, tls=tls) as shard:
        assert shard.url.startswith("https://127.0.0.1:")
        port = int(shard.url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=tls["cert_pem_file"])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        conn.request("GET", "/v1/healthz")
        reply = conn.getresponse()
        assert reply.status == 200
        assert json.loads(reply.read())["status"] in ("ok", "degraded")
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            plain.request("GET", "/v1/healthz")
            answered = plain.getresponse().status
        except (ConnectionError, http.client.HTTPException):
            answered = None
        assert answered is None or answered >= 400  # plain HTTP is not served on a TLS port


def test_written_events_reach_a_real_udp_socket_as_rfc5424_without_content(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    port = receiver.getsockname()[1]
    sink = {"syslog_udp": f"127.0.0.1:{port}", "app_name": "quipu-test", "queue_capacity": 100}
    with ShardProcess.start(tmp_path, sink=sink) as shard:
        for i in range(3):
            body = append_request(f"svc-{i}", content=f"{SECRET} {i}")
            assert shard.request("POST", "/v1/logs", body, role="service").status == 202
        assert shard.request("POST", "/v1/admin/flush").status == 204
        lines, deadline = [], time.monotonic() + 10
        while len(lines) < 3 and time.monotonic() < deadline:
            lines.append(receiver.recv(4096))
    receiver.close()
    assert len(lines) == 3
    for raw in lines:
        assert SECRET.encode() not in raw
        message = parse_rfc5424(raw)
        assert message["app_name"] == "quipu-test"
        assert message["sd"]["quipu@32473"]["method"] == "PUT"
    actors = sorted(parse_rfc5424(raw)["sd"]["quipu@32473"]["actor_id"] for raw in lines)
    assert actors == ["svc-0", "svc-1", "svc-2"]
