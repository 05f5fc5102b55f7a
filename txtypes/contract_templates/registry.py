"""The built-in contract templates, by name (a chain enables a subset in genesis)."""

from __future__ import annotations

from txtypes.contract_templates.base import ContractTemplate
from txtypes.contract_templates.escrow import EscrowTemplate
from txtypes.contract_templates.hourly_work import HourlyWorkTemplate
from txtypes.contract_templates.milestone import MilestoneTemplate


def builtin_templates() -> dict[str, ContractTemplate]:
    templates: list[ContractTemplate] = [
        EscrowTemplate(), HourlyWorkTemplate(), MilestoneTemplate(),
    ]
    return {template.name: template for template in templates}
