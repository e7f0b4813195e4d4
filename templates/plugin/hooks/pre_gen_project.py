"""Refuse invalid names before anything is written (same rules as ``lightning_eff.new``).

Self-contained on purpose: cookiecutter may run from an environment without lightning-eff."""

import keyword
import re
import sys

package_name = "{{ cookiecutter.package_name }}"
project_slug = "{{ cookiecutter.project_slug }}"
RESERVED = {"lightning_eff", "lightning", "pytorch_lightning", "torch", "torchmetrics", "sklearn", "pytest", "test", "tests"}

problems = []
if not re.fullmatch(r"[a-z][a-z0-9_]*", package_name):
    problems.append(
        f"package_name '{package_name}' is not a valid Python package name: use lowercase letters, digits and "
        "underscores, starting with a letter (PEP 8)"
    )
elif keyword.iskeyword(package_name) or package_name in RESERVED or package_name in sys.stdlib_module_names:
    problems.append(f"package_name '{package_name}' is a keyword or would shadow an installed module: choose another")
if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", project_slug):
    problems.append(
        f"project_slug '{project_slug}' is not a valid distribution name: use ASCII letters and digits, with "
        "'-', '_' or '.' only between them (PEP 508)"
    )
if problems:
    print("ERROR: " + "\nERROR: ".join(problems), file=sys.stderr)
    sys.exit(1)
