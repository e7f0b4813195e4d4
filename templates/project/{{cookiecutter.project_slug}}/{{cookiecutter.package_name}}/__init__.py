"""{{ (cookiecutter.project_name ~ ': ' ~ cookiecutter.description.rstrip('.')) | replace('\\', '\\\\') | replace('"', '\\"') }}."""

from {{ cookiecutter.package_name }}.data import DigitsDataModule
from {{ cookiecutter.package_name }}.model import DigitsClassifier

__all__ = ["DigitsClassifier", "DigitsDataModule"]
