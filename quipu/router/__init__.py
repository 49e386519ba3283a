"""The cluster's read side: the shard map (who owns which tenant in each generation), the
client the fronts call shards with, query fan-out with a timestamp merge, and the signed
cross-shard anchor. `quipu router serve CONFIG` runs it."""
