"""`quipu-cluster`: one cluster.yaml -> shards, a router and ingest workers on this host.

The supervisor starts every process of the file, restarts a crashed one, flushes every
shard before it stops, and applies a `grow`. It holds no audit data itself: the stores
belong to the shards, the map to `shards.json`, the tokens to the token file. Every key of
cluster.yaml and every command is described in docs/cluster.md.
"""
