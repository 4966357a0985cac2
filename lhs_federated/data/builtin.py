"""Contracts shipped with the package, so a fresh install runs without any files."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources

from lhs_federated.config import build
from lhs_federated.data.contract import DataContract


def _packaged(name: str) -> Callable[[], DataContract]:
    @cache
    def load() -> DataContract:
        import tomllib

        resource = resources.files("lhs_federated.data") / "contracts" / f"{name}.toml"
        table = tomllib.loads(resource.read_text(encoding="utf-8"))
        return build(DataContract, table, source=f"built-in contract {name!r}")

    return load


BUILTIN_CONTRACTS: dict[str, Callable[[], DataContract]] = {
    "cardio-risk": _packaged("cardio-risk"),
    "uci-heart": _packaged("uci-heart"),
}


def builtin_contract_text(name: str) -> str:
    """The TOML text of a built-in contract (written beside synthetic data)."""
    resource = resources.files("lhs_federated.data") / "contracts" / f"{name}.toml"
    return resource.read_text(encoding="utf-8")
