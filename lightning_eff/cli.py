"""The ``lightning-eff`` command. Plugins add sub-commands through ``leff_add_cli_commands``."""

from __future__ import annotations

import json
import sys
from importlib import metadata

import click

from lightning_eff.errors import ConfigError, LightningEffError


def get_registry():
    """The plugin registry, imported on first use: ``--help`` and ``--version`` must not pay for
    importing the techniques and Lightning."""
    from lightning_eff.registry import get_registry as load

    return load()


class PluginCommandGroup(click.Group):
    """Built-in commands resolve without touching plugins; the commands plugins add through
    ``leff_add_cli_commands`` are collected on first need (an unknown command name, or the listing)."""

    plugins_added = False

    def _add_plugin_commands(self) -> None:
        if not self.plugins_added:
            self.plugins_added = True
            _add_plugin_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and not self.plugins_added:
            self._add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=PluginCommandGroup)
@click.version_option(metadata.version("lightning-eff"), prog_name="lightning-eff")
def cli() -> None:
    """Training-efficiency techniques for PyTorch Lightning."""


def _plugins_report() -> dict:
    return get_registry().report()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins, their techniques and kernels, and plugins that failed to load."""
    report = _plugins_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for p in report["plugins"]:
        where = f"{p['distribution']} {p['version']}" if p["distribution"] else p["module"]
        click.echo(f"{p['name']}  ({where}{', built-in' if p['builtin'] else ''})")
        click.echo(f"    techniques: {', '.join(p['techniques']) or '-'}")
        if p["kernels"]:
            click.echo(f"    kernels:    {', '.join(p['kernels'])}")
    # The kernel layer's own ops are not registered through the plugin hook: listed once here.
    click.echo(f"built-in kernels: {', '.join(report['builtin_kernels']) or '-'}")
    for e in report["errors"]:
        click.echo(f"ERROR {e['plugin']}: {e['message']}")
    if not report["plugins"] and not report["errors"]:
        click.echo("no lightning-eff plugins installed")


@cli.command()
@click.argument("name")
def info(name: str) -> None:
    """Show a technique's options (types, defaults, ranges) and its method card summary."""
    from lightning_eff.docs import method_card_summary, option_table

    registry = get_registry()
    try:
        cls = registry.technique(name)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{cls.name}  ({cls.__module__}.{cls.__qualname__}), phase: {cls.phase}")
    click.echo(f"  from {registry.describe_plugin(registry.technique_plugin[cls.name])}")
    click.echo(f"  {cls.summary()}")
    for label, names in (("runs before", cls.before), ("runs after", cls.after), ("conflicts with", cls.conflicts)):
        if names:
            click.echo(f"  {label}: {', '.join(names)}")
    click.echo("\nOptions:")
    click.echo(option_table(cls))
    card = method_card_summary(cls.name)
    click.echo("\nMethod card: " + (card or "(none yet)"))


@cli.command()
@click.argument("recipe")
def check(recipe: str) -> None:
    """Validate a recipe without training: options, ordering, conflicts, plugin checks."""
    from lightning_eff.plan import resolve_order
    from lightning_eff.recipe import load_recipe
    from lightning_eff.technique import Technique

    try:  # every expected failure, whatever the file holds, is one message without a traceback
        loaded = load_recipe(recipe)
        problems = loaded.validate()
        built = [] if problems else loaded.build()
    except LightningEffError as exc:
        raise click.ClickException(str(exc)) from None
    if problems:
        raise click.ClickException("recipe has problems:\n" + "\n".join(f"  - {p}" for p in problems))
    order, _ = resolve_order([c for c in built if isinstance(c, Technique)])
    click.echo(f"{loaded.source}: OK, {len(order)} technique(s) in this order:")
    for i, t in enumerate(order, 1):
        click.echo(f"  {i}. {t!r}")
    callbacks = [c for c in built if not isinstance(c, Technique)]
    if callbacks:  # Lightning's own callbacks run in the order Lightning gives them, not the plan's
        click.echo(f"plus {len(callbacks)} Lightning callback(s): {', '.join(type(c).__name__ for c in callbacks)}")


def _add_plugin_commands(group: click.Group) -> None:
    from lightning_eff.registry import Registry

    registry = Registry()  # hooks only: listing commands must not import every technique
    registry.load_entry_points(registrations=False)
    for impl in registry.pm.hook.leff_add_cli_commands.get_hookimpls():
        try:
            impl.function(cli=group)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            click.echo(f"warning: plugin '{impl.plugin_name}' failed to add commands: {exc}", err=True)


def _add_builtin_commands(group: click.Group) -> None:
    try:
        from lightning_eff.bench.command import bench
    except ImportError as exc:  # keep `plugins`, `info`, `check` usable; say what `bench` lacks
        message = f"the bench harness cannot be imported ({exc}); install: pip install 'lightning-eff[tasks]'"

        @click.command(name="bench", help="Time-to-quality benchmark (unavailable: missing dependency).")
        def bench() -> None:
            raise click.ClickException(message)

    group.add_command(bench)

    from lightning_eff.new import new

    group.add_command(new)


def main(argv: list[str] | None = None) -> None:
    _add_builtin_commands(cli)
    try:
        cli.main(args=argv, prog_name="lightning-eff", standalone_mode=True)
    except LightningEffError as exc:  # errors meant for the user: no traceback
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
