"""Recipes: the contract (`contract`), the registry (`registry`) and one module per built-in recipe."""
