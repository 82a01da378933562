"""`python -m writer` runs the segshards command line."""

from writer.launch import run

run()
