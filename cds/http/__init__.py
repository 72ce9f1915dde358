"""The thin HTTP layer over the pure core."""

from .app import create_app

__all__ = ["create_app"]
