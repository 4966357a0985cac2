"""The commands the README shows, extracted so that tests can run every one of them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language: str) -> list[str]:
    """Bodies of the README's fenced code blocks in ``language``."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def shell_commands(block: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command and not command.startswith("#"):
            commands.append(" ".join(command.split()))
    return commands


#: Commands that start Ray (slow; run by test_engines.py against the in-process engine).
RAY_COMMANDS = ("--backend ray",)

#: First line of a bash block whose commands build on each other (run in order, in one folder).
IN_ORDER = "# run in order"


def lhs_fed_commands() -> list[str]:
    """Every ``lhs-fed`` command of the README's bash blocks that runs on its own."""
    return [
        c
        for block in code_blocks("bash")
        if not block.startswith(IN_ORDER)
        for c in shell_commands(block)
        if c.startswith("lhs-fed")
    ]


def ordered_blocks() -> list[list[str]]:
    """The ``lhs-fed`` commands of each block marked :data:`IN_ORDER`, in order."""
    return [
        [c for c in shell_commands(block) if c.startswith("lhs-fed")]
        for block in code_blocks("bash")
        if block.startswith(IN_ORDER)
    ]
