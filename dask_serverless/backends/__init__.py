"""Compute backends behind one small interface (``base.Backend``), chosen by name."""

from __future__ import annotations

from .base import Backend


def create_backend(name: str) -> Backend:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "lambda":
        from .aws_lambda import LambdaBackend

        return LambdaBackend()
    raise ValueError(f"serverless.backend = {name!r} is not a backend; choose 'local' or "
                     "'lambda'")


__all__ = ["Backend", "create_backend"]
