"""The recipe room: TOML recipes validated into typed config sections (`schema`), recipes by
name (`presets`), and a resolved recipe written back as annotated TOML (`render`).

Importing it imports no torch: a recipe can be parsed and checked before anything heavy loads
(the plugins a recipe names are imported when it is parsed, not before).
"""

from seqmodel.recipe.schema import (
    PluginChoice,
    Recipe,
    TokenizerBinding,
    TrainConfig,
    apply_overrides,
    load_recipe,
    parse_recipe,
    read_toml,
)

__all__ = ["PluginChoice", "Recipe", "TokenizerBinding", "TrainConfig", "apply_overrides", "load_recipe",
           "parse_recipe", "read_toml"]
