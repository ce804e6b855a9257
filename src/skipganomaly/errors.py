"""``skipganomaly.errors``, kept for outside code: the errors live in :mod:`skipganomaly.specs.errors`."""

from .specs.errors import UserError

__all__ = ["UserError"]
