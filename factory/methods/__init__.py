"""Quantization and fine-tuning methods, one class each (see base.QuantMethod and registry.BUILTIN)."""

from factory.registry import all_methods, get_method, method_names, register, unregister

__all__ = ["all_methods", "get_method", "method_names", "register", "unregister"]
