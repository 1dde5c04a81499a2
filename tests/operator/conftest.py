"""The kmock fixtures of :mod:`.test_operator`, shared with the other operator test modules."""

from .test_operator import declare, operator

__all__ = ["declare", "operator"]
