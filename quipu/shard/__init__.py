"""One shard process: the write pipeline (queue + writer thread + DLQ) and the v1 HTTP API
over one store. `quipu shard serve CONFIG` runs it; `AuditPipeline` embeds the pipeline."""
