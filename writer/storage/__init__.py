"""Where sets live: one Store over a local folder or s3://, retries, atomic writes, folder locks."""
