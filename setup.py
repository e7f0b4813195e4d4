"""Package list only: `plugins/` and `kernels/` live at the top level but install as
`lightning_eff.plugins` / `lightning_eff.kernels`, and `templates/` ships as
`lightning_eff.templates` (package-dir mapping in pyproject.toml)."""

from setuptools import find_packages, setup

ROOTS = {"lightning_eff": "lightning_eff", "lightning_eff.plugins": "plugins", "lightning_eff.kernels": "kernels"}

# Folders shipped as data only: cookiecutter templates (their file names are Jinja, not packages).
DATA_PACKAGES = {"lightning_eff.templates": "templates"}

packages = list(DATA_PACKAGES)
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
