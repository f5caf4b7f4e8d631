"""The package version, in a module of its own: every floor may import it."""

__version__ = "0.1.0"
