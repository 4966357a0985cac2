"""The governance report: one self-contained HTML file a governance team can read.

Rendered from :func:`~lhs_federated.governance.run_audit.audit_run`: the
verdict first (every ledger verified, every site cross-checked, every result
file re-hashed), then the study and its code, participation per round,
privacy spent per site, the model's lineage from round to round, the result
files and the full timeline of the coordinator's ledger. No scripts, no
external resources: it opens anywhere and can be archived as is.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from lhs_federated.governance.ledger import Entry, now
from lhs_federated.governance.ledger_view import RoundView, StudyView
from lhs_federated.governance.run_audit import LedgerCheck, RunAudit
from lhs_federated.governance.run_files import SEAL

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}code{font-size:12px}
.verdict{padding:1em;border-radius:6px;font-size:18px;font-weight:600}
.ok{background:#e3f6e3;color:#145214}.bad{background:#fde2e2;color:#7a1010}
.trained{background:#e3f6e3}.refused{background:#fde2e2}.failed,.error,.no-reply{background:#fff0d6}
.not-sampled{color:#999}.muted{color:#666}td.time{white-space:nowrap}
"""


def render_report(audit: RunAudit) -> str:
    """The governance report of an audited run, as HTML text."""
    view = audit.view
    title = f"Governance report: {view.study_name if view else audit.run_dir.name}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='muted'>Run folder <code>{escape(str(audit.run_dir))}</code>; "
        f"report generated {escape(now())} by lhs-fed audit report.</p>",
        _verdict(audit),
    ]
    if view is not None:
        parts += [
            _study(view, audit),
            _participation(view),
            _privacy(view),
            _lineage(view),
            _files(audit),
        ]
    ledgers = [*audit.segments, audit.coordinator]
    parts.append(_timeline([e for c in ledgers if c.verification for e in c.verification.entries]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(audit: RunAudit, path: str | Path) -> Path:
    """Write the report atomically; return its path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_report(audit), encoding="utf-8")
    tmp.replace(path)
    return path


def _table(header: list[str] | None, rows: list[list[str]]) -> str:
    """An HTML table; cells are already escaped HTML. No header row when ``header`` is None."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table>{head}{body}</table>"


def _th(value: Any) -> str:
    return f"<th scope='row'>{escape(str(value))}</th>"


def _td(value: Any, css: str = "") -> str:
    attr = f" class='{css}'" if css else ""
    return f"<td{attr}>{escape('—' if value is None else str(value))}</td>"


def _code(value: Any) -> str:
    return (
        "<td><code>—</code></td>"
        if value is None
        else f"<td><code>{escape(str(value))}</code></td>"
    )


def _verdict(audit: RunAudit) -> str:
    if audit.ok:
        banner = "<div class='verdict ok'>INTACT: every ledger verifies, every site agrees with "
        banner += "the coordinator, and no result file changed.</div>"
    else:
        banner = f"<div class='verdict bad'>NOT INTACT: {len(audit.problems)} problem(s).</div>"
    items = "".join(f"<li>{escape(p)}</li>" for p in audit.problems)
    notes = "".join(f"<li class='muted'>{escape(n)}</li>" for n in audit.notes)
    checks = [*audit.segments, audit.coordinator, *audit.sites]
    rows = [_ledger_row(check) for check in checks]
    ledgers = _table(
        ["ledger", "records", "verification", "public key", "cross-check with coordinator"],
        rows,
    )
    return (
        "<h2>Verdict</h2>"
        + banner
        + (f"<ul>{items}</ul>" if items else "")
        + (f"<ul>{notes}</ul>" if notes else "")
        + ledgers
    )


def _ledger_row(check: LedgerCheck) -> list[str]:
    verification = check.verification
    if verification is None:
        state, css, records, key = check.error or "not verified", "refused", "—", check.key
    else:
        state = "intact" if verification.ok else verification.problem.describe()
        css = "trained" if verification.ok else "refused"
        records, key = (
            str(len(verification.entries)),
            f"{check.key} ({verification.key_fingerprint})",
        )
    if check.crosscheck is None:
        cross, cross_css = "—", ""
    elif check.crosscheck.ok:
        cross, cross_css = f"consistent: {check.crosscheck.matched} replies match", "trained"
    else:
        cross, cross_css = "; ".join(check.crosscheck.problems), "refused"
    return [
        _td(check.owner),
        _td(records),
        _td(state, css),
        _code(key),
        _td(cross, cross_css),
    ]


def _study(view: StudyView, audit: RunAudit) -> str:
    rows = [
        ["study", view.study_name],
        ["study hash", view.study_hash],
        ["code", f"{view.code.get('kind')}: {view.code.get('hash')}"],
        ["versions", ", ".join(f"{k} {v}" for k, v in view.versions.items())],
        ["engine / Flower run id", f"{view.engine} / {view.run_id}"],
        ["coordinator key", view.key_fingerprint],
        ["key the audit trusted", audit.key_trust or "—"],
        ["participants", ", ".join(view.participants)],
        ["started", view.started_at],
        ["ended", f"{view.finished_at or '—'} ({view.status})"],
    ]
    if view.error:
        rows.append(["error", view.error])
    return "<h2>Study</h2>" + _table(
        None, [[_th(k), _code(v) if "hash" in k or k == "code" else _td(v)] for k, v in rows]
    )


def _participation(view: StudyView) -> str:
    rows = []
    for current in view.rounds:
        cells = [_td(current.round)]
        for site in view.participants:
            status = current.status_of(site)
            reply = current.train.get(site)
            text = (
                status
                if reply is None or reply.examples is None
                else f"{status} (n={reply.examples})"
            )
            why = current.failed.get(site) or (reply.detail if reply is not None else None)
            if why and status != "trained":
                text += f": {why}"
            evaluated = "evaluated" if site in current.evaluation else "not evaluated"
            cells.append(_td(f"{text}; {evaluated}", status.replace(" ", "-")))
        rows.append(cells)
    return "<h2>Participation per round</h2>" + _table(
        ["round", *map(escape, view.participants)], rows
    )


def _privacy(view: StudyView) -> str:
    spent = view.epsilon()
    if not any(spent.values()):
        return (
            "<h2>Privacy spent per site</h2><p>No site reported privacy spending in its replies "
            "(the study does not train with differential privacy).</p>"
        )
    rows = []
    for current in view.rounds:
        rows.append(
            [_td(current.round)]
            + [_td(_fmt(spent.get(site, {}).get(current.round))) for site in view.participants]
        )
    final = [_td("final")] + [
        _td(_fmt(max(spent[site].values())) if spent.get(site) else None)
        for site in view.participants
    ]
    return "<h2>Privacy spent per site (epsilon, cumulative, as each site reported)</h2>" + _table(
        ["round", *map(escape, view.participants)], [*rows, final]
    )


def _lineage(view: StudyView) -> str:
    rows = []
    for current in view.rounds:
        rows.append(_lineage_row(current))
    final = (
        f"<p>Final model: <code>{escape(str(view.final_model_hash))}</code>"
        + (
            " (the last round's aggregate)."
            if view.rounds and view.final_model_hash == view.rounds[-1].aggregated_hash
            else " — differs from the last round's aggregate!"
        )
        + "</p>"
        if view.final_model_hash
        else ""
    )
    return (
        "<h2>Model lineage</h2><p class='muted'>Each round starts from the global arrays sent "
        "to the sampled sites; each site's update (hash, L2 norm of the change) goes into the "
        "aggregate, which the next round starts from.</p>"
        + _table(["round", "global arrays sent", "site updates", "aggregate"], rows)
        + final
    )


def _lineage_row(current: RoundView) -> list[str]:
    updates = "<br>".join(
        f"{escape(site)}: <code>{escape(_short(r.arrays_hash))}</code> "
        f"norm {escape(_fmt(r.update_norm))}"
        for site, r in sorted(current.train.items())
        if r.status == "ok"
    )
    return [
        _td(current.round),
        _code(_short(current.sent_arrays_hash)),
        f"<td>{updates or '—'}</td>",
        _code(_short(current.aggregated_hash)),
    ]


def _files(audit: RunAudit) -> str:
    view = audit.view
    listed = dict(view.result_files) if view else {}
    if view is not None and view.sealed_files is not None:
        listed = {
            **view.sealed_files,
            **{k: str(v.get("sha256")) for k, v in view.sealed_logs.items()},
        }
    names = sorted(set(listed) | set(audit.files))
    if not names:
        return (
            "<h2>Result files</h2><p>The ledger lists no result files (the study did not "
            "finish).</p>"
        )
    rows = [
        [
            _td(name),
            _code(listed.get(name)),
            _td(audit.files.get(name), _file_css(audit.files.get(name))),
        ]
        for name in names
    ]
    return "<h2>Result files</h2>" + _table(["file", "SHA-256 in the ledger", "on disk"], rows)


def _file_css(state: str | None) -> str:
    return "trained" if state in ("unchanged", "appended") else "refused"


def _timeline(entries: list[Entry]) -> str:
    rows = [
        [_td(e.seq), _td(e.time, "time"), _td(e.kind, "time"), _td(describe_record(e))]
        for e in entries
    ]
    return "<h2>Timeline (coordinator ledger)</h2>" + _table(
        ["seq", "time (UTC)", "event", "details"], rows
    )


def describe_record(entry: Entry) -> str:
    """One line saying what a coordinator ledger record states."""
    data = entry.data
    kind = entry.kind
    if kind == "ledger-opened":
        return (
            f"ledger {data.get('ledger_id')} of {data.get('owner')}, "
            f"key {data.get('key_fingerprint')}"
        )
    if kind == "study-started":
        sites = ", ".join(p["site"] for p in data.get("participants", []))
        return f"study {data.get('study_name')} {_short(data.get('study_hash'))}; sites {sites}"
    if kind == "round-started":
        return (
            f"round {data.get('round')}: sampled {', '.join(data.get('sampled_sites', []))}; "
            f"global {_short(data.get('arrays_hash'))}"
        )
    if kind == "site-reply":
        text = (
            f"{data.get('site')} {data.get('stage')} round {data.get('round')}: "
            f"{data.get('status')}"
        )
        if data.get("status") == "ok":
            text += f", {data.get('size')} bytes, content {_short(data.get('content_hash'))}"
            if data.get("epsilon") is not None:
                text += f", epsilon {_fmt(data.get('epsilon'))}"
        else:
            text += f" ({data.get('detail')})"
        return text
    if kind == "round-aggregated":
        failed = data.get("failed") or {}
        return (
            f"round {data.get('round')}: aggregate {_short(data.get('arrays_hash'))} of "
            f"{', '.join(data.get('contributors', []))}"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        )
    if kind == "evaluation":
        aurocs = ", ".join(
            f"{site} AUROC {_fmt(m.get('auroc'))}" for site, m in data.get("per_site", {}).items()
        )
        return f"round {data.get('round')}: {aurocs}"
    if kind == "study-finished":
        files = len(data.get("result_files", {}))
        return f"final model {_short(data.get('final_model_hash'))}; {files} result files"
    if kind == "study-failed":
        return f"failed: {data.get('error')}"
    if kind == SEAL:
        logs = ", ".join(
            f"{name} ({info.get('bytes')} bytes)" for name, info in data.get("logs", {}).items()
        )
        return f"sealed {len(data.get('files', {}))} files" + (
            f" and the log {logs}" if logs else ""
        )
    return ", ".join(f"{k}={v}" for k, v in data.items())


def _short(value: Any) -> str:
    return "—" if not value else f"{str(value)[:16]}…"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
