"""The recipe registry: every recipe, built-in or third-party, is an entry point of `segshards.recipes`.

An entry point names a recipe class (or instance) as `module:Name`; it is imported only when that recipe
is used, so `segshards --help` stays fast. Workers receive a recipe's import reference (`recipe_ref`), not
its name, so a recipe that only the building program knows (a test's, a notebook's) renders there too.
"""

import functools
import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from segshards.writer.errors import ConfigError
from segshards.writer.recipes.contract import Recipe

GROUP = "segshards.recipes"
# The built-in recipes, for a source tree that was never installed (no entry-point metadata to read).
BUILT_IN = {
    "mnist-foreground": "segshards.writer.recipes.foreground:ForegroundRecipe",
    "mnist-circle": "segshards.writer.recipes.circle:CircleRecipe",
    "mnist-grid": "segshards.writer.recipes.grid:GridRecipe",
    "coco-semantic": "segshards.writer.recipes.coco:CocoSemanticRecipe",
    "mask-folder": "segshards.writer.recipes.mask_folder:MaskFolderRecipe",
}


def registered() -> dict[str, EntryPoint]:
    """Recipe name -> entry point, sorted by name (not imported)."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name, value in BUILT_IN.items():
        found.setdefault(name, EntryPoint(name, value, GROUP))
    return dict(sorted(found.items()))


def recipe_names() -> list[str]:
    return list(registered())


@functools.cache
def load_ref(ref: str) -> Recipe:
    """The recipe at import reference `module:Name` (a class is instantiated)."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    recipe = obj() if isinstance(obj, type) else obj
    if not isinstance(recipe, Recipe):
        raise ConfigError(
            f"recipe {ref}: does not implement the recipe contract (segshards.writer.recipes.contract)"
        )
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or a ConfigError listing the known ones."""
    entry = registered().get(name)
    if entry is None:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    recipe = load_ref(entry.value)
    if recipe.name != name:
        raise ConfigError(f"recipe entry point {name!r} ({entry.value}) names itself {recipe.name!r}")
    return recipe


def recipe_ref(recipe: Recipe) -> str:
    """The import reference of `recipe`'s class, which `load_ref` turns back into the recipe."""
    cls = type(recipe)
    return f"{cls.__module__}:{cls.__qualname__}"


if TYPE_CHECKING:  # the type checker holds every built-in recipe to the contract
    from segshards.writer.recipes.circle import CircleRecipe
    from segshards.writer.recipes.coco import CocoSemanticRecipe
    from segshards.writer.recipes.foreground import ForegroundRecipe
    from segshards.writer.recipes.grid import GridRecipe
    from segshards.writer.recipes.mask_folder import MaskFolderRecipe

    _CHECKED: tuple[Recipe, ...] = (
        ForegroundRecipe(),
        CircleRecipe(),
        GridRecipe(),
        CocoSemanticRecipe(),
        MaskFolderRecipe(),
    )
