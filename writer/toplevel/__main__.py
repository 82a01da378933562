"""`python -m segshards ...` is the `segshards` command."""

from segshards.writer.launch import run

run()
