"""Command line: ``python -m {{ cookiecutter.package_name }}.train fit --config config.yaml`` (LightningCLI).

The efficiency techniques come from the lightning-eff recipe named by ``--recipe`` (``recipe.yaml``
in config.yaml); ``--recipe none`` trains the baseline with the same settings.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning_eff.recipe import load_recipe

from {{ cookiecutter.package_name }}.data import DigitsDataModule
from {{ cookiecutter.package_name }}.model import DigitsClassifier


class RecipeCLI(LightningCLI):
    """LightningCLI whose Trainer also gets the recipe's techniques and Trainer settings."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--recipe", type=str, default="recipe.yaml",
            help="lightning-eff recipe: a YAML path or a shipped recipe name; 'none' trains the baseline",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init.get(str(self.subcommand), self.config_init)
        source = config.get("recipe")
        if not source or str(source).lower() == "none":
            return super().instantiate_trainer(**kwargs)
        recipe = load_recipe(source)
        techniques = recipe.build()
        base = {**(config.get("trainer") or {}), **kwargs}
        merged = recipe.trainer_kwargs(techniques, base=base)  # the recipe's `trainer:` + plugin hooks
        callbacks = base.get("callbacks") or []
        merged["callbacks"] = [*(callbacks if isinstance(callbacks, list) else [callbacks]), *techniques]
        return super().instantiate_trainer(**merged)


def cli_main(args: list[str] | None = None, run: bool = True) -> RecipeCLI:
    return RecipeCLI(
        DigitsClassifier, DigitsDataModule, args=args, run=run, seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    cli_main()
