"""``python -m skipganomaly.cli``: the command line, as ``python -m skipganomaly`` runs it."""

from . import entry_point

if __name__ == "__main__":
    entry_point()
