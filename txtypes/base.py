"""Base class and registry for rule modules (one module per transaction family).

A module is a class deriving from `TxFamily`, published by its package under the
`cityledger.txtypes` entry-point group:

    [project.entry-points."cityledger.txtypes"]
    tokens = "txtypes.tokens:TokensFamily"

Genesis names the modules a chain runs (and their parameters); `load_modules` finds each
one through its entry point and refuses to start when one is missing, so every validator
runs the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ledger.rules import BlockContext, RuleError, StateView, TxContext

ENTRY_POINT_GROUP = "cityledger.txtypes"


class Payload(BaseModel):
    """Base for operation payload schemas: strict types, no unknown fields, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TxFamily:
    """Convenience base: override `family`, `operations`, and the check/apply hooks.

    `check` and `apply` dispatch to `check_<op>` / `apply_<op>` methods when present.
    """

    family: ClassVar[str] = ""
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {}

    def init_genesis(self, state: StateView, params: Mapping[str, Any]) -> None:
        return None

    def check(self, ctx: TxContext, state: StateView) -> None:
        handler = getattr(self, f"check_{ctx.tx.op}", None)
        if handler is not None:
            handler(ctx, state)

    def apply(self, ctx: TxContext, state: StateView) -> Mapping[str, Any]:
        handler = getattr(self, f"apply_{ctx.tx.op}", None)
        if handler is None:
            raise RuleError("unknown_operation", f"{self.family} has no operation {ctx.tx.op!r}")
        result: Mapping[str, Any] | None = handler(ctx, state)
        return result or {}

    def begin_block(self, block: BlockContext, state: StateView) -> None:
        return None

    def end_block(self, block: BlockContext, state: StateView) -> None:
        return None


class ModuleNotInstalled(Exception):
    """Genesis names a rule module that no installed package provides."""


def available_modules() -> dict[str, Any]:
    """Entry-point name -> entry point, for every installed rule module."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_modules(names: Sequence[str]) -> list[TxFamily]:
    """Instantiate the named modules, in genesis order; a clear error if one is missing."""
    found = available_modules()
    modules: list[TxFamily] = []
    for name in names:
        if name not in found:
            raise ModuleNotInstalled(
                f"genesis names rule module {name!r}, which is not installed "
                f"(installed: {', '.join(sorted(found)) or 'none'}); install the package "
                f"that provides the {ENTRY_POINT_GROUP!r} entry point {name!r}"
            )
        cls = found[name].load()
        module = cls()
        if getattr(module, "family", None) != name:
            raise ModuleNotInstalled(
                f"entry point {name!r} loads {cls.__name__} whose family is "
                f"{getattr(module, 'family', None)!r}, not {name!r}"
            )
        modules.append(module)
    return modules
