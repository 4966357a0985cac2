"""``lhs-fed audit``: verify ledgers, show them, cross-check them, report on a run.

Exit codes: 0 when the ledger (or run) is intact, 1 when it is not (the
message names the first bad record and what is wrong), 2 for bad input (not
a ledger, a missing or wrong key file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lhs_federated.errors import ConfigError
from lhs_federated.governance.crosscheck import crosscheck
from lhs_federated.governance.keys import fingerprint, load_public_key
from lhs_federated.governance.ledger import Entry, read_header
from lhs_federated.governance.ledger_view import StudyView
from lhs_federated.governance.report import write_report
from lhs_federated.governance.run_audit import audit_run
from lhs_federated.governance.run_files import COORDINATOR_PUBLIC_KEY, GOVERNANCE_DIR
from lhs_federated.governance.site_folder import PUBLIC_FILE
from lhs_federated.governance.verify import Anchor, Verification, load_entries, verify_ledger

app = typer.Typer(help="Verify, show and cross-check ledgers.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:  # pipes and CI logs: room for hashes
    console.width = max(console.width, 140)

LedgerArgument = Annotated[Path, typer.Argument(help="A ledger file (.jsonl).")]
KeyOption = Annotated[
    Path | None, typer.Option("--public-key", help="The ledger owner's public key (.pub).")
]


@app.command("verify")
def verify_command(
    ledger: LedgerArgument,
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The ledger owner's public key (.pub).")
    ],
    summary: Annotated[
        Path | None,
        typer.Option(
            "--summary", help="The run's summary.json: its final hash must end the ledger."
        ),
    ] = None,
    allow_open: Annotated[
        bool, typer.Option("--allow-open", help="Accept a study that is still running.")
    ] = False,
) -> None:
    """Check every record's hash, signature and place; name the first bad record."""
    key = load_public_key(public_key)
    _check_key_is_the_ledgers(ledger, key, public_key)
    result = verify_ledger(
        ledger, key, anchor=_summary_anchor(summary) if summary else None, allow_open=allow_open
    )
    console.print(result.describe(), markup=False)
    if not result.ok:
        raise typer.Exit(1)


def _check_key_is_the_ledgers(ledger: Path, key, key_path: Path) -> None:
    """A key other than the one the ledger's header names is a wrong input (exit 2).

    Raises
    ------
    ConfigError
        Naming both fingerprints: either the wrong key was given, or the whole
        ledger was re-signed with another key (compare with the published one).
    """
    entries = load_entries(ledger)
    named = entries[0].data.get("key_fingerprint") if entries else None
    given = fingerprint(key)
    if named is not None and named != given:
        raise ConfigError(
            f"{ledger}: its header names signing key {named}, but --public-key "
            f"{key_path} is {given}: a wrong public key, or a ledger re-signed with another "
            "key (compare with the fingerprint the owner published)."
        )


@app.command("show")
def show_command(ledger: LedgerArgument, public_key: KeyOption = None) -> None:
    """Print a ledger as tables: rounds, participants, epsilon per site, model hashes."""
    if public_key is not None:
        result = verify_ledger(ledger, load_public_key(public_key), allow_open=True)
        console.print(result.describe(), markup=False)
        entries = list(result.entries)
    else:
        console.print(f"{ledger}: not verified (pass --public-key to verify it)")
        entries = load_entries(ledger)
    role = entries[0].data.get("role")
    if role == "coordinator":
        _show_study(StudyView.from_entries(entries))
    else:
        _show_records(entries, role=str(role), owner=str(entries[0].data.get("owner")))
    if public_key is not None and not result.ok:
        raise typer.Exit(1)


@app.command("crosscheck")
def crosscheck_command(
    server_ledger: Annotated[Path, typer.Argument(help="The coordinator's ledger.")],
    site_ledger: Annotated[Path, typer.Argument(help="One site's ledger.")],
    server_key: Annotated[
        Path | None,
        typer.Option(
            "--server-key", help="Coordinator's public key (default: coordinator.pub beside it)."
        ),
    ] = None,
    site_key: Annotated[
        Path | None,
        typer.Option("--site-key", help="Site's public key (default: site.pub beside it)."),
    ] = None,
) -> None:
    """Confirm that the coordinator's record of a site's replies matches what the site sent."""
    results = [
        _verified(server_ledger, server_key, COORDINATOR_PUBLIC_KEY, "--server-key"),
        _verified(site_ledger, site_key, PUBLIC_FILE, "--site-key"),
    ]
    for result in results:
        console.print(result.describe(), markup=False)
    server, site = results
    outcome = crosscheck(
        list(server.entries),
        list(site.entries),
        unverified=list(server.unverified),
        site_unverified=list(site.unverified),
    )
    console.print(outcome.describe(), markup=False)
    if not (server.ok and site.ok and outcome.ok):
        raise typer.Exit(1)


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="HTML file (default: RUN_DIR/governance/report.html)."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Coordinator's published public key (default: the run's own copy, checked "
            "against the key the site ledgers record).",
        ),
    ] = None,
    site_ledger: Annotated[
        list[Path] | None,
        typer.Option(
            "--site-ledger",
            help="A site's ledger.jsonl (site.pub beside it), for sites that keep theirs "
            "outside the run folder; repeat for each site.",
        ),
    ] = None,
) -> None:
    """Write a self-contained HTML governance report of a run, with its verdict."""
    audit = audit_run(run_dir, public_key=public_key, site_ledgers=site_ledger or [])
    path = write_report(audit, out or run_dir / GOVERNANCE_DIR / "report.html")
    if audit.ok:
        console.print(f"INTACT: {run_dir}: every ledger verifies and agrees; no result changed.")
    else:
        console.print(f"NOT INTACT: {run_dir}:", markup=False)
        for problem in audit.problems:
            console.print(f"  {problem}", markup=False)
    for note in audit.notes:
        console.print(f"  note: {note}", markup=False)
    console.print(f"report: {path}")
    if not audit.ok:
        raise typer.Exit(1)


def _summary_anchor(path: Path) -> Anchor:
    """The ledger's study-finished record as summary.json names it, and the seal after it."""
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))["ledger"]
        if "finished_hash" not in ledger:  # a run from before the seal
            return Anchor(int(ledger["final_seq"]), str(ledger["final_hash"]), str(path))
        seq = int(ledger["finished_seq"])
        then = int(ledger["sealed_seq"]) - seq
        return Anchor(seq, str(ledger["finished_hash"]), str(path), then)
    except FileNotFoundError as exc:
        raise ConfigError(f"summary file {str(path)!r} does not exist.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not a run summary naming its ledger's study-finished record "
            f"(ledger.finished_seq, ledger.finished_hash, ledger.sealed_seq): {exc}"
        ) from exc


def _verified(ledger: Path, key: Path | None, beside: str, option: str) -> Verification:
    read_header(ledger)  # not a ledger: bad input, before looking for keys
    path = key or ledger.parent / beside
    if key is None and not path.is_file():
        raise ConfigError(f"no public key for {ledger}: pass {option} (no {beside} beside it).")
    return verify_ledger(ledger, load_public_key(path), allow_open=True)


def _short(value: object) -> str:
    return "—" if not value else f"{str(value)[:12]}…"


def _show_study(view: StudyView) -> None:
    console.print(
        f"study {view.study_name!r} {view.study_hash}\n"
        f"code {view.code.get('kind')} {view.code.get('hash')}; "
        + ", ".join(f"{k} {v}" for k, v in view.versions.items())
        + f"\nengine {view.engine}, Flower run {view.run_id}, "
        + f"coordinator key {view.key_fingerprint}"
        + f"\nparticipants: {', '.join(view.participants)}",
        markup=False,
    )
    spent = view.epsilon()
    table = Table(title="rounds")
    for column in (
        "round",
        "sampled",
        "trained",
        "refused / failed",
        "epsilon per site",
        "global model",
    ):
        table.add_column(column, overflow="fold")
    for current in view.rounds:
        trained = [s for s, r in current.train.items() if r.status == "ok"]
        failed = {
            **{s: r.status for s, r in current.train.items() if r.status != "ok"},
            **current.failed,
        }
        epsilon = ", ".join(
            f"{site} {spent[site][current.round]:.3g}"
            for site in view.participants
            if current.round in spent.get(site, {})
        )
        table.add_row(
            str(current.round),
            ", ".join(current.sampled),
            ", ".join(sorted(trained)),
            "; ".join(f"{s}: {why}" for s, why in failed.items()) or "—",
            epsilon or "not reported",
            _short(current.aggregated_hash),
        )
    console.print(table)
    console.print(
        f"status {view.status}"
        + (f" ({view.error})" if view.error else "")
        + f"; final model {view.final_model_hash or '—'}",
        markup=False,
    )


def _show_records(entries: list[Entry], *, role: str, owner: str) -> None:
    table = Table(title=f"{role} ledger of {owner!r}")
    for column in ("seq", "time", "kind", "study", "run / round", "what"):
        table.add_column(column, overflow="fold")
    for entry in entries[1:]:
        data = entry.data
        if entry.kind == "message-sent":
            what = (
                f"{data.get('message_type')} {data.get('status')}, {data.get('size')} B, "
                f"{_short(data.get('content_hash'))}"
            )
            if data.get("epsilon") is not None:
                what += f", epsilon {data['epsilon']:.3g}"
        elif entry.kind == "study-closed":
            final = data.get("coordinator_ledger", {})
            what = (
                f"{final.get('status')}: coordinator record {final.get('final_seq')} = "
                f"{_short(final.get('final_hash'))}"
            )
        else:
            what = str(data.get("reason") or data.get("by") or "")
        run = data.get("run_id")
        table.add_row(
            str(entry.seq),
            entry.time,
            entry.kind,
            data.get("study_name") or _short(data.get("study_hash")),
            "—" if run is None else f"{run} / {data.get('server_round', '—')}",
            what,
        )
    console.print(table)
