"""The recipe registry: name -> recipe object."""

from segshards.writer.errors import ConfigError
from segshards.writer.recipe import Recipe
from segshards.writer.recipes.circle import CircleRecipe
from segshards.writer.recipes.coco import CocoSemanticRecipe
from segshards.writer.recipes.foreground import ForegroundRecipe
from segshards.writer.recipes.grid import GridRecipe

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (ForegroundRecipe(), CircleRecipe(), GridRecipe(), CocoSemanticRecipe())
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or a ConfigError listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None
