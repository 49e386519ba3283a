"""The embedded, synchronous storage engine: no asyncio, no HTTP.

Layers, bottom up: `merkle` (pure RFC 6962 hashing and verifiers), `proof` (RFC 6962 proof
construction over any subtree-hash source), `spine` (the stored Merkle nodes), `segment`
(framed append-only files), `table` (segments + chain + spine), `ledger` (a store directory:
lock, tables, checkpoints, retention, verification).
"""
