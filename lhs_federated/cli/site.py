"""``lhs-fed site``: a site's own governance (its folder, approvals and revocations).

Run by a site's data steward on the site's machine; nothing here talks to the
coordinator. The site's launcher (deployment) checks these approvals before
any study code runs.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from lhs_federated.cli.study_input import load_with_overrides
from lhs_federated.errors import ConfigError
from lhs_federated.governance.code import fab_hash, installed_code_hash
from lhs_federated.governance.keys import fingerprint, load_public_key
from lhs_federated.governance.site_folder import SiteFolder

if TYPE_CHECKING:
    from lhs_federated.study import Study

app = typer.Typer(help="A site's node, approvals and policy.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:  # pipes and CI logs: room for hashes
    console.width = max(console.width, 140)

SiteFolderOption = Annotated[
    Path, typer.Option("--site-folder", help="The site's governance folder (`lhs-fed site init`).")
]
StudyPath = Annotated[Path, typer.Argument(help="The study TOML file to approve.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a study key, as the run will (repeatable)."),
]
FabOption = Annotated[
    Path | None, typer.Option("--fab", help="The Flower App bundle (.fab) that will run the study.")
]
CodeHashOption = Annotated[
    str | None, typer.Option("--code-hash", help="SHA-256 of the code that will run it (hex).")
]
InstalledOption = Annotated[
    bool,
    typer.Option("--installed", help="The installed lhs-federated package (for simulated sites)."),
]
DeploymentOption = Annotated[
    bool,
    typer.Option(
        "--deployment",
        help="The app bundle this lhs-federated version deploys studies with "
        "(what `lhs-fed server run` submits; computed here, no file needed).",
    ),
]
ByOption = Annotated[
    str | None, typer.Option("--by", help="Who decides (default: the current user).")
]
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why: e.g. the ethics approval reference.")
]


@app.command("init")
def init_command(
    folder: Annotated[Path, typer.Argument(help="The folder to create.")],
    name: Annotated[str, typer.Option("--name", help="The site's name, as studies know it.")],
) -> None:
    """Create a site's governance folder: its key, approvals registry and ledger."""
    site = SiteFolder.init(folder, name)
    console.print(f"site folder {folder} for site {name!r}")
    console.print(f"public key  {folder / 'site.pub'}  ({fingerprint(site.public_key)})")


@app.command("approve")
def approve_command(
    study: StudyPath,
    site_folder: SiteFolderOption,
    reason: ReasonOption,
    fab: FabOption = None,
    code_hash: CodeHashOption = None,
    installed: InstalledOption = False,
    deployment: DeploymentOption = False,
    by: ByOption = None,
    set_: SetOption = None,
    coordinator_key: Annotated[
        Path | None,
        typer.Option(
            "--coordinator-key",
            help="The coordinator's published ledger key (.pub): accept this study only from "
            "a coordinator whose messages name it.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="An OMOP study: the site config whose state folder holds the snapshot "
            "(`lhs-fed site extract`) the approval binds.",
        ),
    ] = None,
) -> None:
    """Approve a study, run by one version of the code, at this site."""
    resolved = load_with_overrides(study, set_ or [])
    code = _code_hash(fab, code_hash, installed, deployment, required=True)
    pinned = fingerprint(load_public_key(coordinator_key)) if coordinator_key else None
    snapshot_hash = _snapshot_hash(resolved, config)
    site = SiteFolder.open(site_folder)
    approval = site.approve(
        resolved.hash,
        code,
        study_name=resolved.name,
        by=by or getpass.getuser(),
        reason=reason,
        coordinator_key=pinned,
        snapshot_hash=snapshot_hash,
    )
    bound = f", snapshot {snapshot_hash}" if snapshot_hash else ""
    console.print(
        f"site {site.site!r} approved study {resolved.name!r} {approval.study_hash} "
        f"with code {approval.code_hash}{bound} (by {approval.approved_by}, "
        f"{approval.approved_at})"
    )


@app.command("extract")
def extract_command(
    study: Annotated[Path, typer.Argument(help="The OMOP study TOML file to extract.")],
    config: Annotated[Path, typer.Option("--config", help="The site's config (site.toml).")],
    set_: SetOption = None,
) -> None:
    """Extract an OMOP study's table from the site's database and freeze it (recorded)."""
    from lhs_federated.data.omop.snapshot import extract_snapshot
    from lhs_federated.deploy.site_node import open_site_folder
    from lhs_federated.site_config import load_site_config

    resolved = load_with_overrides(study, set_ or [])
    site_config = load_site_config(config)
    folder = open_site_folder(site_config)
    snapshot = extract_snapshot(resolved, site_config, record=folder.ledger.append)
    replaced = f"; replaces {snapshot.replaces}" if snapshot.replaces else ""
    console.print(
        f"site {snapshot.site!r} extracted study {resolved.name!r} ({resolved.hash[:12]}…) "
        f"from its {snapshot.database}: {snapshot.rows} rows, index dates "
        f"{snapshot.first_index_date}..{snapshot.last_index_date}"
    )
    console.print(f"snapshot {snapshot.snapshot_hash}  SQL {snapshot.sql_hash}{replaced}")
    console.print(
        "recorded in the site ledger; approve the study with `lhs-fed site approve "
        f"{study} --config {config} ...` (an approval binds this snapshot)"
    )


@app.command("revoke")
def revoke_command(
    site_folder: SiteFolderOption,
    reason: ReasonOption,
    study: Annotated[
        Path | None, typer.Argument(help="The study TOML file (or give --study-hash).")
    ] = None,
    study_hash: Annotated[
        str | None, typer.Option("--study-hash", help="The study hash to revoke.")
    ] = None,
    fab: FabOption = None,
    code_hash: CodeHashOption = None,
    installed: InstalledOption = False,
    deployment: DeploymentOption = False,
    by: ByOption = None,
    set_: SetOption = None,
) -> None:
    """Withdraw an approval (of one code version, or of every version by default)."""
    if (study is None) == (study_hash is None):
        raise ConfigError("name the study to revoke: a STUDY.toml file or --study-hash, not both.")
    target = study_hash or load_with_overrides(study, set_ or []).hash
    code = _code_hash(fab, code_hash, installed, deployment, required=False)
    site = SiteFolder.open(site_folder)
    revocation = site.revoke(target, code_hash=code, by=by or getpass.getuser(), reason=reason)
    which = "every code version" if code is None else f"code {code}"
    console.print(f"site {site.site!r} revoked study {target} ({which}) at {revocation.revoked_at}")


@app.command("approvals")
def approvals_command(site_folder: SiteFolderOption) -> None:
    """List the approvals in force at this site."""
    site = SiteFolder.open(site_folder, with_key=False)
    table = Table(title=f"approvals in force at site {site.site!r}")
    for column in ("study", "study hash", "code hash", "by", "when", "why"):
        table.add_column(column, overflow="fold")
    for approval in site.registry.approvals():
        table.add_row(
            approval.study_name,
            approval.study_hash[:16] + "…",
            approval.code_hash[:16] + "…",
            approval.approved_by + (" (pre-approved)" if approval.preapproved else ""),
            approval.approved_at,
            approval.reason,
        )
    console.print(table)


def _snapshot_hash(study: Study, config: Path | None) -> str | None:
    """The snapshot an OMOP study's approval binds (None for other studies)."""
    if study.data.source != "omop":
        if config is not None:
            raise ConfigError(
                f"--config binds an OMOP study's snapshot; study {study.name!r} reads "
                f"data.source = {study.data.source!r}: drop --config."
            )
        return None
    if config is None:
        raise ConfigError(
            f"study {study.name!r} reads the site's OMOP database: its approval binds the "
            "site's frozen snapshot; extract it with `lhs-fed site extract STUDY.toml --config "
            "site.toml`, then approve with --config site.toml."
        )
    from lhs_federated.data.omop.snapshot import current_snapshot
    from lhs_federated.site_config import load_site_config

    return current_snapshot(load_site_config(config), study).snapshot_hash


def _code_hash(
    fab: Path | None,
    code_hash: str | None,
    installed: bool,
    deployment: bool,
    *,
    required: bool,
) -> str | None:
    given = [
        option
        for option, value in (
            ("--fab", fab),
            ("--code-hash", code_hash),
            ("--installed", installed),
            ("--deployment", deployment),
        )
        if value
    ]
    if len(given) > 1:
        raise ConfigError(
            f"give one of --fab, --code-hash, --installed or --deployment; got {', '.join(given)}."
        )
    if not given:
        if required:
            raise ConfigError(
                "an approval names the code that will run the study: give --deployment (the "
                "app bundle `lhs-fed server run` deploys), --fab FILE, --code-hash HEX, or "
                "--installed (simulated sites)."
            )
        return None
    if fab is not None:
        return fab_hash(fab)
    if installed:
        return installed_code_hash()
    if deployment:
        from lhs_federated.deploy.app_bundle import bundle_hash

        return bundle_hash()
    value = str(code_hash).strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"--code-hash must be 64 hex digits (a SHA-256); got {code_hash!r}.")
    return value
