"""Command-line entry points (`quipu`, and `quipu-cluster` with issue 5)."""
