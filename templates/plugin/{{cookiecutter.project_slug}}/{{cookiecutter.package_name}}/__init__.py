"""{{ (cookiecutter.project_name ~ ': ' ~ cookiecutter.description.rstrip('.')) | replace('\\', '\\\\') | replace('"', '\\"') }}.

This module is the plugin: ``pyproject.toml`` names it in the ``lightning_eff`` entry-point group,
and lightning-eff calls the ``@hookimpl`` functions below once per process when it loads plugins.
``lightning-eff plugins`` lists what they registered (or why the plugin failed to load).
"""

from lightning_eff import hookimpl

from {{ cookiecutter.package_name }}.gradient_noise import GradientNoise
from {{ cookiecutter.package_name }}.rms_norm import KERNEL_NAME, PRIORITY, rms_norm_native

__all__ = ["GradientNoise", "rms_norm_native"]


@hookimpl
def leff_register_techniques(register):
    register(GradientNoise)


@hookimpl
def leff_register_kernels(register):
    register("rms_norm", KERNEL_NAME, rms_norm_native, priority=PRIORITY)
