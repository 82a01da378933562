"""The recipe registry: name -> recipe object."""

from writer.errors import ConfigError
from writer.recipe import Recipe
from writer.recipes.circle import CircleRecipe
from writer.recipes.coco import CocoSemanticRecipe
from writer.recipes.foreground import ForegroundRecipe
from writer.recipes.grid import GridRecipe

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (ForegroundRecipe(), CircleRecipe(), GridRecipe(), CocoSemanticRecipe())
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or a ConfigError listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None
