# lightning_eff.testing doubles as a pytest plugin for technique authors.
pytest_plugins = ["lightning_eff.testing"]
