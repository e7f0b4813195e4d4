"""Package list only: `plugins/` and `kernels/` live at the top level but install as
`lightning_eff.plugins` / `lightning_eff.kernels` (package-dir mapping in pyproject.toml)."""

from setuptools import find_packages, setup

ROOTS = {"lightning_eff": "lightning_eff", "lightning_eff.plugins": "plugins", "lightning_eff.kernels": "kernels"}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
