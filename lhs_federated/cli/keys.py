"""``lhs-fed keys``: the coordinator's ledger signing key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lhs_federated.governance.keys import fingerprint, load_private_key, write_key_pair

app = typer.Typer(help="Signing keys of ledgers.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)


@app.command("init")
def init_command(
    path: Annotated[
        Path, typer.Argument(help="Private key file to create (its .pub goes beside it).")
    ] = Path("coordinator.key"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing key (old ledgers stay signed).")
    ] = False,
) -> None:
    """Create an Ed25519 signing key (private file mode 0600) and its public key."""
    public = write_key_pair(path, overwrite=force)
    key = load_private_key(path)
    console.print(f"private key  {path}  (mode 0600; keep it secret and backed up)")
    console.print(f"public key   {public}  (for auditors; every run's results carry a copy)")
    console.print(f"fingerprint  {fingerprint(key.public_key())}")
    console.print(
        f"use it with: lhs-fed simulate STUDY --coordinator-key {path}, or the ServerApp's "
        f"run config ledger-key={path}"
    )
