"""Networks: the registry (``create_model``, ``list_models``) and one file per model family."""

from .registry import count_flops, count_parameters, create_model, get_entry, list_models, register_model

__all__ = ["count_flops", "count_parameters", "create_model", "get_entry", "list_models", "register_model"]
