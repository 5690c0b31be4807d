"""Open311 GeoReport v2 for the intake service: residents' apps report and follow cases."""

from .api import build_router

__all__ = ["build_router"]
