"""Pluggable contract templates for the contracts family."""

from txtypes.contract_templates.base import Contract, ContractTemplate, Opening
from txtypes.contract_templates.registry import builtin_templates

__all__ = ["Contract", "ContractTemplate", "Opening", "builtin_templates"]
