"""`python -m segshards ...` is the `segshards` command."""

from segshards.writer.cli.launch import run

run()
