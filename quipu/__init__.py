"""Quipu: a tamper-evident audit log (append-only segments, RFC 6962 proofs, signed checkpoints)."""
