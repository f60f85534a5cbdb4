"""A module that fails while being imported (tests/test_cli.py)."""

SETTING = 1 / 0
