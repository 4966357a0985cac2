"""Cross-checking the coordinator's ledger against one site's ledger.

Each side records every reply independently: the site what it sent
(``message-sent``), the coordinator what it received (``site-reply``), both
with the id of the message answered, the content hash, the size and the
arrays hash. :func:`crosscheck` matches the two for one study run and reports:

- a reply the coordinator records but the site never sent (fabricated, or
  removed from the site's ledger);
- a reply the site sent that the coordinator does not record (left out, or
  it arrived after the coordinator stopped waiting, which the coordinator
  then records as a failure of that site: reported as a note);
- a reply whose hash, size or status differs (altered in transit or in a
  ledger);
- a site whose record of the coordinator's final hash (``study-closed``)
  disagrees with the coordinator's ledger: the ledger was cut short or
  rewritten after the study ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lhs_federated.errors import ConfigError
from lhs_federated.governance.ledger import Entry
from lhs_federated.governance.site_folder import MESSAGE_SENT, REFUSAL, STUDY_CLOSED

_COMPARED = ("status", "content_hash", "size", "arrays_hash")


@dataclass
class CrossCheck:
    """The outcome of :func:`crosscheck`.

    Attributes
    ----------
    site : str
        The site whose ledger was compared.
    run_id : int
        The study run compared.
    matched : int
        Replies both ledgers record identically.
    problems : list of str
        Disagreements; the ledgers are consistent when it is empty.
    notes : list of str
        Facts worth knowing that are not disagreements (refusals, late replies).
    keys_seen : set of str
        Fingerprints of the coordinator key the site's records of this run name.
    end_problems : list of str
        The problems (also in ``problems``) about where the coordinator's
        ledger ends, from the final hash the site holds.
    key_mismatch : bool
        The coordinator ledger is signed by another key than the one the site
        saw (nothing else is compared then: it is not the ledger the site
        dealt with).
    """

    site: str
    run_id: int
    matched: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keys_seen: set[str] = field(default_factory=set)
    key_mismatch: bool = False
    end_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the two ledgers agree."""
        return not self.problems

    def describe(self) -> str:
        """A verdict paragraph with every problem and note."""
        verdict = "CONSISTENT" if self.ok else "INCONSISTENT"
        lines = [
            f"{verdict}: coordinator and site {self.site!r} (run {self.run_id}): "
            f"{self.matched} replies match"
            + (f", {len(self.problems)} problem(s)" if self.problems else "")
        ]
        lines += [f"  problem: {problem}" for problem in self.problems]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def crosscheck(
    coordinator: list[Entry],
    site: list[Entry],
    *,
    unverified: list[Entry] | None = None,
    site_unverified: list[Entry] | None = None,
    coordinator_lost: bool = False,
    site_lost: bool = False,
) -> CrossCheck:
    """Match a site's ``message-sent`` records with the coordinator's ``site-reply`` records.

    Parameters
    ----------
    coordinator : list of Entry
        The coordinator ledger's records (verified beforehand, ideally).
    site : list of Entry
        The site ledger's records.
    unverified, site_unverified : list of Entry, optional
        Records of either ledger that did not verify (already reported): a
        reply only such a record holds is noted as not compared, not reported
        as missing.
    coordinator_lost, site_lost : bool
        Either ledger is known to have lost records (deleted, unreadable:
        already reported): a reply missing from it is noted, not reported again.

    Raises
    ------
    ConfigError
        If the first ledger is not a coordinator ledger with a
        ``study-started`` record, or the second is not a site ledger.
    """
    if not coordinator or coordinator[0].data.get("role") != "coordinator":
        raise ConfigError("the first ledger is not a coordinator ledger.")
    if not site or site[0].data.get("role") != "site":
        raise ConfigError("the second ledger is not a site ledger (role 'site').")
    started = next((e for e in coordinator if e.kind == "study-started"), None)
    if started is None:
        raise ConfigError("the coordinator ledger has no 'study-started' record.")
    name = str(site[0].data["owner"])
    run_id = int(started.data["run_id"])
    result = CrossCheck(name, run_id)
    received = {
        str(e.data["message_id"]): e
        for e in coordinator
        if e.kind == "site-reply" and e.data.get("site") == name
    }
    sent = {
        str(e.data["reply_to"]): e
        for e in site
        if e.kind == MESSAGE_SENT and int(e.data.get("run_id", -1)) == run_id
    }
    if not any(p.get("site") == name for p in started.data.get("participants", [])) and not sent:
        result.problems.append(
            f"site {name!r} neither took part in run {run_id} nor sent anything in it: "
            "these ledgers belong to different studies or sites"
        )
        return result
    closes = [e for e in site if e.kind == STUDY_CLOSED and int(e.data.get("run_id", -1)) == run_id]
    result.keys_seen = {
        str(e.data["coordinator_key"]) for e in sent.values() if e.data.get("coordinator_key")
    }
    result.keys_seen |= {
        str(e.data["coordinator_ledger"]["key_fingerprint"])
        for e in closes
        if e.data["coordinator_ledger"].get("key_fingerprint")
    }
    signer = str(coordinator[0].data.get("key_fingerprint"))
    if result.keys_seen and signer not in result.keys_seen:
        result.key_mismatch = True
        result.problems.append(
            f"site {name!r} was sent messages of run {run_id} naming coordinator key "
            f"{', '.join(sorted(result.keys_seen))}; this coordinator ledger is signed by "
            f"{signer}: it is not the ledger the site dealt with (replaced and re-signed)"
        )
        return result
    late = _late_sites(coordinator, name)
    unsure_received = {
        str(e.data.get("message_id")): e for e in unverified or [] if e.kind == "site-reply"
    }
    unsure_sent = {
        str(e.data.get("reply_to")): e for e in site_unverified or [] if e.kind == MESSAGE_SENT
    }
    sent_up_to = max((_stage_key(e.data) for e in sent.values()), default=(-1, -1))
    rolled_back = []
    for message_id, reply in received.items():
        mine = sent.get(message_id)
        where = _where(reply.data.get("stage"), reply.data.get("round"), message_id)
        if mine is None and message_id in unsure_sent:
            result.notes.append(
                f"the reply to {where} is not compared: the site's record of it (record "
                f"{unsure_sent[message_id].seq}) does not verify"
            )
            continue
        if mine is None and site_lost:
            result.notes.append(
                f"the reply to {where} is not in the site's ledger, which lost records "
                "(reported as such)"
            )
            continue
        if mine is None and _stage_key(reply.data) > sent_up_to:
            rolled_back.append(where)
            continue
        if mine is None:
            result.problems.append(
                f"the coordinator records a reply to {where} that the site's ledger does not "
                "hold: recorded by the coordinator without the site sending it, or removed "
                "from the site's ledger"
            )
            continue
        if mine.data.get("status") == "crashed" and reply.data.get("status") == "error":
            # The site's handler raised; Flower, not the site's code, built the error reply.
            result.matched += 1
            result.notes.append(
                f"the site's ClientApp raised on {where} ({mine.data.get('detail')}); the "
                "coordinator received Flower's error reply"
            )
            continue
        differing = [key for key in _COMPARED if reply.data.get(key) != mine.data.get(key)]
        model = mine.data.get("received_arrays_hash")
        if model and reply.data.get("sent_arrays_hash") not in (None, model):
            result.problems.append(
                f"the site received another model for {where} than the coordinator's ledger "
                f"says it sent: {_short(model)} at the site, "
                f"{_short(reply.data.get('sent_arrays_hash'))} recorded as sent"
            )
        if differing:
            result.problems.append(
                f"reply to {where}: "
                + "; ".join(
                    f"{key} is {reply.data.get(key)!r} at the coordinator, "
                    f"{mine.data.get(key)!r} at the site"
                    for key in differing
                )
            )
        else:
            result.matched += 1
    head_problem = _check_head(coordinator, site, name, run_id)
    if head_problem is not None:
        result.problems.append(head_problem)
    elif rolled_back:
        result.problems.append(
            f"site {name}'s ledger ends at record {site[-1].seq}, before its replies to "
            f"{len(rolled_back)} later message(s) the coordinator recorded ({rolled_back[0]}"
            + (f" to {rolled_back[-1]}" if len(rolled_back) > 1 else "")
            + "): the site's ledger was rolled back to an older copy, or cut short"
        )
    cut_after = _cut_after(coordinator, site, run_id)
    last_recorded = max(
        (_stage_key(e.data) for e in coordinator if e.kind == "site-reply"), default=(0, 0)
    )
    for message_id, mine in sent.items():
        if message_id in received:
            continue
        where = _where(mine.data.get("message_type"), mine.data.get("server_round"), message_id)
        if message_id in unsure_received:
            result.notes.append(
                f"the reply to {where} is not compared: the coordinator's record of it (record "
                f"{unsure_received[message_id].seq}) does not verify"
            )
        elif coordinator_lost:
            result.notes.append(
                f"the site's reply to {where} is not in the coordinator's ledger, which lost "
                "records (reported as such)"
            )
        elif cut_after is not None and _stage_key(mine.data) > last_recorded:
            result.notes.append(
                f"the site's reply to {where} is not in the coordinator's ledger, which was "
                f"cut short after record {cut_after} (reported as such)"
            )
        elif int(mine.data.get("server_round", 0)) in late:
            result.notes.append(
                f"the site replied to {where}, but the coordinator had stopped waiting "
                "(it records the site as not replying in that round)"
            )
        else:
            result.problems.append(
                f"the site sent a reply to {where} that the coordinator's ledger does not "
                "record: left out of the coordinator's ledger"
            )
    refusals = [e for e in site if e.kind == REFUSAL and int(e.data.get("run_id", -1)) == run_id]
    if refusals:
        result.notes.append(
            f"the site refused {len(refusals)} message(s) of this run: "
            f"{refusals[0].data.get('reason')}"
        )
    _check_close(coordinator, site, run_id, result, {e.seq for e in unverified or []})
    return result


def _check_close(
    coordinator: list[Entry],
    site: list[Entry],
    run_id: int,
    result: CrossCheck,
    unverified: set[int],
) -> None:
    closed = [e for e in site if e.kind == STUDY_CLOSED and int(e.data.get("run_id", -1)) == run_id]
    if not closed:
        if coordinator[-1].kind == "study-finished":
            result.notes.append(
                "the site holds no final hash of this run (it was not told the study closed), "
                "so truncation of the coordinator's ledger cannot be checked against it"
            )
        return
    final = closed[-1].data["coordinator_ledger"]
    seq, digest = int(final["final_seq"]), str(final["final_hash"])
    last = coordinator[-1]
    by_seq = {entry.seq: entry for entry in coordinator}
    if seq in unverified:
        result.notes.append(
            f"the coordinator's final record {seq}, which the site holds the hash of, does "
            "not verify: not compared"
        )
        return
    if seq in by_seq and by_seq[seq].hash == digest:
        if last.seq != seq:
            _end_problem(
                result,
                f"the coordinator's ledger goes on after record {seq}, which the site was "
                "told is its final record: records were appended after the study closed",
            )
        return
    if seq not in by_seq:
        _end_problem(
            result,
            f"the coordinator's ledger ends at record {last.seq}, but the site was told the "
            f"final record is {seq} (hash {digest[:16]}…): the ledger was cut short",
        )
    else:
        _end_problem(
            result,
            f"the site was told record {seq} has hash {digest[:16]}…, the coordinator's "
            f"ledger has {by_seq[seq].hash[:16]}…: the ledger was rewritten",
        )


def _end_problem(result: CrossCheck, problem: str) -> None:
    result.problems.append(problem)
    result.end_problems.append(problem)


def _check_head(coordinator: list[Entry], site: list[Entry], name: str, run_id: int) -> str | None:
    """The site ledger must still hold the record it named as its last at the run's start."""
    heads = [
        e.data["site_ledger_head"]
        for e in coordinator
        if e.kind == "site-reply" and e.data.get("site") == name and e.data.get("site_ledger_head")
    ]
    if not heads:
        return None
    seq, digest = int(heads[0]["seq"]), str(heads[0]["hash"])
    held = {entry.seq: entry.hash for entry in site}
    if held.get(seq) == digest:
        return None
    if seq not in held:
        return (
            f"site {name}'s ledger ends at record {site[-1].seq}, but at the start of run "
            f"{run_id} it reached record {seq} ({digest[:16]}…), as the coordinator recorded: "
            "the site's ledger was rolled back to an older copy, or cut short"
        )
    return (
        f"site {name}'s ledger holds another record {seq} than the one ({digest[:16]}…) it "
        f"named at the start of run {run_id}, as the coordinator recorded: the site's ledger "
        "was rewritten"
    )


def _cut_after(coordinator: list[Entry], site: list[Entry], run_id: int) -> int | None:
    """The coordinator ledger's last record, if the site knows the ledger went on past it."""
    closed = [e for e in site if e.kind == STUDY_CLOSED and int(e.data.get("run_id", -1)) == run_id]
    if not closed:
        return None
    final_seq = int(closed[-1].data["coordinator_ledger"]["final_seq"])
    last = coordinator[-1].seq
    return last if last < final_seq else None


def _stage_key(data: dict) -> tuple[int, int]:
    """(round, stage) of a reply as either ledger records it, to order replies in time."""
    stage = str(data.get("stage") or data.get("message_type") or "")
    number = data.get("round", data.get("server_round", 0))
    order = {"discovery": 0, "query": 0, "train": 1, "evaluate": 2}
    return int(number or 0), order.get(stage, 3)


def _late_sites(coordinator: list[Entry], site: str) -> set[int]:
    """Rounds in which the coordinator records ``site`` as not replying in time."""
    rounds = set()
    for entry in coordinator:
        if entry.kind in ("round-aggregated", "evaluation"):
            reason = str(entry.data.get("failed", {}).get(site, ""))
            if "no reply" in reason:
                rounds.add(int(entry.data["round"]))
    return rounds


def _short(value: object) -> str:
    return "—" if not value else f"{str(value)[:16]}…"


def _where(stage: object, server_round: object, message_id: str) -> str:
    return f"message {message_id} ({stage}, round {server_round})"
