"""`python -m writer` runs the segshards command line."""

from writer.cli import run

run()
