"""Package list only: `plugins/` and `kernels/` live at the top level but install as
`lightning_eff.plugins` / `lightning_eff.kernels`, and `templates/` ships as
`lightning_eff.templates` (package-dir mapping in pyproject.toml).

Every folder Python could import (an identifier name, with or without ``__init__.py``) is listed, data
folders such as ``recipes/`` and the templates' ``hooks/`` included: setuptools warns about each one
left out ("Package would be ignored"), about 150 lines on every install.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {
    "lightning_eff": "lightning_eff",
    "lightning_eff.plugins": "plugins",
    "lightning_eff.kernels": "kernels",
    "lightning_eff.templates": "templates",
}


def importable(name: str) -> bool:
    return all(part.isidentifier() and part != "__pycache__" for part in name.split("."))


packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_namespace_packages(folder) if importable(sub)]

setup(packages=packages)
