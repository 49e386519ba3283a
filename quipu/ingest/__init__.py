"""The cluster's stateless ingest front: token -> tenant -> the shard that owns the tenant's
writes (ShardMap), batches split per shard, every other call forwarded to the router, so
one public URL does everything. Any number of workers share one port (SO_REUSEPORT); each
holds only the shard map and the token table, both re-read when their files change.
`quipu ingest serve CONFIG` runs one worker."""
