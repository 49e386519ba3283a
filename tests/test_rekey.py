"""The offline re-key after a leak: values re-wrapped, tokens re-digested, rewrite audited."""

from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.core.audit_store import AuditStore, StoreConfig
from quipu.core.event import AuditEvent, EntityInput, TargetSpec
from quipu.core.keyring import HmacKey, KeyRing, RsaKey
from quipu.core.ledger import Ledger
from quipu.core.query_spec import LogQuery, TargetFilter
from quipu.core.rekey import rekey
from quipu.core.schema import BlindIndex, FieldDef, Protection, TypeSchema, default_actor_type
from quipu.core.table import TableConfig
from quipu.core.values import Content

PATIENT = TypeSchema(
    "patient", (FieldDef.text("name").protect(Protection.RSA).blind(BlindIndex("Prefix", 4)),)
)


def rings(old_key: RsaKey) -> tuple[KeyRing, KeyRing]:
    """The leaked ring, and the new one: RSA v2 signs and encrypts, v1 stays public-only
    (it still verifies old checkpoints), HMAC v2 is added for new tokens."""
    new_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = KeyRing([old_key], [HmacKey(1, b"1" * 32)])
    new = KeyRing(
        [RsaKey(1, old_key.public), RsaKey(2, new_private.public_key(), new_private)],
        [HmacKey(1, b"1" * 32), HmacKey(2, b"2" * 32)],
    )
    return old, new


def fill(root, keys: KeyRing) -> None:
    with AuditStore.open(StoreConfig(root, keys=keys)) as store:
        store.define_type(default_actor_type())
        store.define_type(PATIENT)
        for i in range(30):
            patient = TargetSpec("patient", EntityInput(f"p{i}").text("name", f"Patient Number {i}"))
            store.append(
                AuditEvent(
                    "default_actor", EntityInput("dr"), "GET", "/c", Content("Text", "x"), targets=(patient,)
                )
            )
        store.checkpoint()


def name_prefix(prefix: str) -> LogQuery:
    return LogQuery(targets=(TargetFilter.exact("patient", "name", prefix).prefix(),), limit=100)


def test_rekey_rewraps_values_so_the_leaked_key_reads_nothing(tmp_path, rsa_key):
    old, new = rings(rsa_key)
    fill(tmp_path, old)
    report = rekey(tmp_path, old, new)
    assert report.values_rewrapped == 30
    assert report.tokens_redigested == 30
    with AuditStore.open(StoreConfig(tmp_path, keys=new)) as store:
        view = store.query(LogQuery(limit=1)).logs[0]
        assert view["targets"][0]["fields"]["name"]["Text"].startswith("Patient Number")
        assert store.count(name_prefix("Pati")) == 30  # tokens re-digested under HMAC v2
        assert store.verify_integrity().ok
    leaked_only = KeyRing([rsa_key], [HmacKey(1, b"1" * 32)])
    with AuditStore.open(StoreConfig(tmp_path, keys=leaked_only)) as store:
        view = store.query(LogQuery(limit=1)).logs[0]
        assert set(view["targets"][0]["fields"]["name"]) == {"Rsa"}  # ciphertext only
    assert not (tmp_path / "registry.replaced").exists()


def test_audited_rekey_verifies_and_a_silent_rewrite_does_not(tmp_path, rsa_key):
    old, new = rings(rsa_key)
    fill(tmp_path, old)
    rekey(tmp_path, old, new)
    with Ledger.open(tmp_path, {"registry": TableConfig(), "logs": TableConfig()}, keys=new) as ledger:
        assert ledger.verify_integrity().ok
        table = ledger.table("registry")
        records = [(r.ts, r.payload) for r in table.records()][:-1]  # one version quietly dropped
        ledger.rebuild_table("registry", records)
        report = ledger.verify_integrity()
    assert not report.ok
    assert any("registry:" in p for p in report.problems)


def test_rekey_event_is_signed_and_an_edit_is_caught(tmp_path, rsa_key):
    old, new = rings(rsa_key)
    fill(tmp_path, old)
    rekey(tmp_path, old, new)
    log = tmp_path / "checkpoints.log"
    lines = log.read_bytes().splitlines()
    at = next(i for i, line in enumerate(lines) if b'"kind":"rekey"' in line)
    lines[at] = lines[at].replace(b'"old_tree_size":', b'"old_tree_size":1')
    log.write_bytes(b"\n".join(lines) + b"\n")
    with Ledger.open(tmp_path, {"registry": TableConfig(), "logs": TableConfig()}, keys=new) as ledger:
        report = ledger.verify_integrity()
    assert not report.ok
    assert any("re-key event" in p and "signature" in p for p in report.problems)


def test_interrupted_swap_is_finished_or_undone_on_open(tmp_path, rsa_key):
    old, _ = rings(rsa_key)
    fill(tmp_path, old)
    (tmp_path / "registry").rename(tmp_path / "registry.replaced")  # crash between the renames
    (tmp_path / "registry.rebuilding").mkdir()
    with AuditStore.open(StoreConfig(tmp_path, keys=old)) as store:
        assert store.count(LogQuery()) == 30
        assert len(store.list_entities("patient")) == 30
        assert store.verify_integrity().ok
    assert not (tmp_path / "registry.replaced").exists()
    assert not (tmp_path / "registry.rebuilding").exists()
