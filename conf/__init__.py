"""The Hydra configs, installed as the package ``ratlit.conf`` (pyproject.toml maps it onto this folder)."""
