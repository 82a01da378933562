"""The shard format every reader shares: tar members, image codecs, keys, manifest, schema, limits, sample checks."""
