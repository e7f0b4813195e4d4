"""Built-in techniques, installed as ``lightning_eff.plugins``; each family is a plugin module."""
