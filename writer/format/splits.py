"""The standard split names, in the order they are built and listed.

A module of its own, importing nothing: the console entry point (`segshards.writer.cli.launch`) reads
them before the heavy imports; `segshards.writer.format.manifest.SPLITS` is this same constant.
"""

SPLITS = ("train", "val", "test")
