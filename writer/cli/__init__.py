"""The `segshards` command line."""
