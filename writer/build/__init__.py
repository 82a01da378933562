"""A build: plan (global dedup in a fixed order), shard tasks, the local process pool, the dask backend."""
