"""The offline re-key after a key leak: re-wrap every Rsa value under a new RSA key.

Appending cannot help here (the old ciphertext would stay readable with the leaked key), so
the `registry` table, where protected values live, is rewritten: every Rsa value is
decrypted with the old ring, encrypted under the new ring's highest RSA version, and its
blind-index tokens are digested again under the new HMAC version. The rewrite is audited:
a re-key event signed with the new key names the old and the new tree, and
verify_integrity accepts the rewrite through it only; a silent rewrite still fails every
earlier checkpoint. Sha256 and Hmac values are one-way and stay as they are, so old HMAC
versions must stay in the new ring. Run it with the store closed (it takes the lock).
"""

import os
from dataclasses import dataclass

import orjson

from quipu.core import protection
from quipu.core.checkpoint import RekeyEvent
from quipu.core.errors import BadInput
from quipu.core.keyring import KeyRing
from quipu.core.ledger import Ledger
from quipu.core.schema import Protection, TypeSchema
from quipu.core.table import TableConfig

REGISTRY = "registry"


@dataclass(frozen=True)
class RekeyReport:
    values_rewrapped: int
    tokens_redigested: int
    event: RekeyEvent


def rekey(root: str | os.PathLike, old_keys: KeyRing, new_keys: KeyRing) -> RekeyReport:
    """Rewrite the registry of the store at `root` under `new_keys` and log the signed event."""
    if new_keys.signing_key() is None:
        raise BadInput("the new key ring needs an RSA private key: it signs the re-key event")
    with Ledger.open(root, {REGISTRY: TableConfig()}, keys=new_keys) as ledger:
        counts = [0, 0]
        schemas: dict[str, TypeSchema] = {}
        records = [
            (rec.ts, _rewrite(rec.payload, schemas, old_keys, new_keys, counts))
            for rec in ledger.table(REGISTRY).records()
        ]
        old_size, old_root = ledger.rebuild_table(REGISTRY, records)
        event = ledger.record_rekey(REGISTRY, old_size, old_root)
    return RekeyReport(counts[0], counts[1], event)


def _rewrite(
    payload: bytes, schemas: dict[str, TypeSchema], old: KeyRing, new: KeyRing, counts: list[int]
) -> bytes:
    rec = orjson.loads(payload)
    if rec.get("r") == "type":
        schema = TypeSchema.from_json(rec["schema"])
        schemas[schema.type_name] = schema
        return payload
    if rec.get("r") != "entity":
        return payload
    schema = schemas[rec["type"]]
    for name, stored in rec["f"].items():
        field = schema.field(name)
        if field is None or field.protection != Protection.RSA:
            continue
        if field.search.kind != "None":
            rec["k"][name] = protection.retoken(rec["type"], field, stored, old, new)
            counts[1] += 1
        rec["f"][name] = protection.rewrap(rec["type"], field, stored, old, new)
        counts[0] += 1
    return orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)
