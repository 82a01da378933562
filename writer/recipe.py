"""The recipe contract under its original name, for recipes written against `segshards.writer.recipe`.

New code imports `segshards.writer.recipes.contract`; this module re-exports it unchanged.
"""

from segshards.writer.recipes.contract import *  # noqa: F403
from segshards.writer.recipes.contract import __all__  # noqa: F401
