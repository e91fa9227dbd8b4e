"""Recipe bundles: every setting of one way to train, under one name.

A recipe (trainer.recipes) is the solver; a bundle adds the network, the precision, where the
training data lives, the steps per call, the length and the recipe's settings that differ
from its defaults. `paper` is Levi & Hassner as published; `improved` is the fastest way to
their accuracy that the time-to-accuracy races found (README: A recipe ten times faster).

trainer.main and trainer.cross_validate take --bundle=NAME: each of its settings becomes a
flag's default, and a flag given on the command line wins. trainer.time_to_accuracy races
bundles by name.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Bundle:
    name: str
    model: str
    recipe: str  # trainer.recipes.RECIPES
    precision: str = "fp32"
    data: str = "records"  # trainer.data.SOURCES
    epochs: float = 0  # 0: the recipe's own length
    steps_per_call: int = 0  # 0: the machine's default (trainer.cli)
    xla: bool = False
    recipe_settings: dict = dataclasses.field(default_factory=dict)  # recipes.resolve's overrides


PAPER = Bundle("paper", model="levi_hassner", recipe="paper")
# Raced on fold 1 of a synthetic Adience at 56x56 and confirmed on fold 0 with other seeds
# (README: A recipe ten times faster): the modern recipe's rate 8x higher over half the epochs,
# a batch of 128 and 10 steps per call for the CPU's throughput, the weights' moving average.
IMPROVED = Bundle("improved", model="resnet", recipe="modern", precision="mixed_bfloat16",
                  data="resident", epochs=15, steps_per_call=10,
                  recipe_settings={"learning_rate": 0.8, "batch_size": 128, "ema_decay": 0.98})
BUNDLES = {bundle.name: bundle for bundle in (PAPER, IMPROVED)}
# The settings a bundle gives, by the name of the flag that overrides each.
FLAG_SETTINGS = ("model", "recipe", "precision", "data", "epochs", "steps_per_call", "xla")


def describe(bundle):
    """One line: the bundle's settings, as the flags that would give them, then the recipe's
    settings it changes (its batch_size is per replica; --batch_size is global)."""
    flags = " ".join(f"--{key}" if value is True else
                     f"--{key}={value:g}" if isinstance(value, float) else f"--{key}={value}"
                     for key in FLAG_SETTINGS
                     for value in [getattr(bundle, key)] if value not in (0, None, False))
    changed = ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in bundle.recipe_settings.items())
    return flags + (f"; the {bundle.recipe} recipe with {changed}" if changed else "")
