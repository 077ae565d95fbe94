"""The package version, in one place: the root re-exports it and modules inside read it from here."""

__version__ = "0.1.0.dev0"
