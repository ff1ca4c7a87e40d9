"""Composed-retrieval methods, one module each, registered by name."""

from composir.methods.base import MethodConfig, RetrievalMethod
from composir.methods.registry import available_methods, build_method, register_method

__all__ = ["MethodConfig", "RetrievalMethod", "available_methods", "build_method", "register_method"]
