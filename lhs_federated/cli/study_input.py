"""The study a command names: its TOML file with ``--set KEY=VALUE`` overrides.

Its own small module so that commands which only sometimes load a study
(``site check``, ``server start``) do not import the study layer (pandas,
numpy) before they need it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lhs_federated.errors import ConfigError

if TYPE_CHECKING:
    from lhs_federated.study import Study


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs; values are TOML (bare words are strings).

    Raises
    ------
    ConfigError
        If an assignment has no ``=``.
    """
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set rounds=20")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text
        overrides[key.strip()] = value
    return overrides


def load_with_overrides(study_path: Path | None, assignments: list[str]) -> Study:
    """The study a command names, with its ``--set`` overrides applied."""
    import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks)
    from lhs_federated.study import load_study

    study = load_study(study_path)
    overrides = parse_overrides(assignments)
    return study.with_overrides(overrides) if overrides else study
