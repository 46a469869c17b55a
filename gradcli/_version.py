"""The one source of gradcli's version."""

__version__ = "0.1.0"
