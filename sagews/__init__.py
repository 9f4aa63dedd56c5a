"""Sage Workspaces: collaborative computational workspaces."""

__version__ = "0.1.0"
