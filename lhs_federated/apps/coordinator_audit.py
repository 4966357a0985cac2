"""The coordinator's ledger of a study, fed by small hooks in :func:`run_study`.

:class:`CoordinatorAudit` keeps ``<run>/governance/coordinator.jsonl``, signed
with the coordinator's key (a key file given in the run config, or a key made
for this run only, kept in memory, whose public key goes beside the ledger):

- ``study-started``: study hash, the resolved study, lhs-federated and Flower
  versions, the code (FAB hash in deployment, the installed package's hash
  in simulation), Flower's run id and the participants;
- ``round-started``: round, sampled sites, hash of the round config, hash of
  the global arrays sent;
- ``site-reply`` for every reply: site, stage, examples, hash of the content
  and of the arrays, size, update norm, epsilon if reported, or the refusal
  or error;
- ``round-aggregated``: hash of the new global arrays, aggregate metrics,
  who contributed and who failed why;
- ``evaluation``: per-site metrics;
- ``study-finished`` (final model hash, result files and their hashes), then,
  once ``summary.json``, the analysis and the report are written,
  ``results-sealed`` with the SHA-256 of every file a reader sees; or
  ``study-failed`` (with the same hashes of what the run left).

Replies are recorded by :class:`AuditedGrid`, a Grid wrapper that sees every
message the loop sends and every reply it gets; it also tells simulated sites
where their governance folders are. After ``results-sealed`` every
participant is sent the ledger's final hash (``query.ledger_close``), which
goes into its own ledger; ``summary.json`` names the ``study-finished``
record and the seal's sequence number (the seal in turn hashes it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from lhs_federated.apps import records
from lhs_federated.apps.reply_digest import content_hash, digest_reply, update_norm
from lhs_federated.apps.run_config import LEDGER_KEY, SIMULATED_SITES
from lhs_federated.apps.site_governance import (
    CLOSE_TYPE,
    COORDINATOR_KEY,
    FINAL_HASH,
    FINAL_SEQ,
    LEDGER_ID,
    STUDY_STATUS,
)
from lhs_federated.apps.site_grid import GridWrapper, addressees, replying_node
from lhs_federated.governance.code import FAB, INSTALLED, installed_code_hash
from lhs_federated.governance.keys import fingerprint, load_private_key, public_key_pem
from lhs_federated.governance.ledger import Ledger
from lhs_federated.governance.run_files import (
    COORDINATOR_LEDGER,
    COORDINATOR_PUBLIC_KEY,
    GOVERNANCE_DIR,
    SEAL,
    SEGMENT_GLOB,
    SIMULATED_SITES_DIR,
    hash_result_files,
    seal_files,
    segment_name,
)
from lhs_federated.governance.verify import load_entries
from lhs_federated.learning.metrics import MetricReport
from lhs_federated.results.writer import versions
from lhs_federated.study import Study

_STAGES = {MessageType.QUERY: "discovery", MessageType.TRAIN: "train"}


@dataclass(frozen=True)
class AuditOptions:
    """How the coordinator keeps its ledger.

    Attributes
    ----------
    key_path : Path or None
        The coordinator's private key (``lhs-fed keys init``); None: a key
        made for this run only, never written to disk.
    simulated_sites : Path or None
        Where simulated sites keep their governance folders; None:
        ``<run>/governance/sites``. Deployed sites ignore it.
    """

    key_path: Path | None = None
    simulated_sites: Path | None = None

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> AuditOptions:
        """Read ``ledger-key`` and ``simulated-sites`` (empty: the defaults)."""
        key = str(config.get(LEDGER_KEY) or "").strip()
        sites = str(config.get(SIMULATED_SITES) or "").strip()
        return cls(Path(key) if key else None, Path(sites) if sites else None)


class CoordinatorAudit:
    """The coordinator's ledger of one run (see the module docstring).

    Parameters
    ----------
    grid : Grid
        The engine's grid; use :attr:`grid` (the audited wrapper) instead.
    study : Study
        The resolved study.
    out_dir : Path
        The run's results folder.
    options : AuditOptions
        The coordinator's key and the simulated sites' folder.

    Raises
    ------
    ConfigError
        If the key file is missing, unreadable or not an Ed25519 key.
    """

    def __init__(self, grid: Grid, study: Study, out_dir: Path, options: AuditOptions) -> None:
        self.study = study
        self.out_dir = Path(out_dir)
        self._key_given = options.key_path is not None
        self._key = (
            load_private_key(options.key_path)
            if options.key_path is not None
            else Ed25519PrivateKey.generate()
        )
        # Absolute: simulated sites may run in other processes (Ray) with another cwd.
        self._simulated_sites = (
            options.simulated_sites or self.out_dir / GOVERNANCE_DIR / SIMULATED_SITES_DIR
        ).resolve()
        self._ledger: Ledger | None = None
        self._closed = False
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._sites: dict[int, str] = {}
        self._sent: dict[tuple[int, str], _Sent] = {}
        self._addressed: dict[str, int] = {}
        self.grid = AuditedGrid(grid, self)

    def stamp(self, message: Message) -> None:
        """Name the ledger's key to every site; tell simulated sites where their folders are.

        Each site records the key's fingerprint, so an auditor can tell whether
        the run folder's ``coordinator.pub`` is the key the sites saw.
        """
        config = message.content[records.CONFIG]
        config[records.SIMULATED_SITE_FOLDERS] = str(self._simulated_sites)
        config[COORDINATOR_KEY] = fingerprint(self._key.public_key())

    def open(
        self,
        sites: Mapping[int, str],
        *,
        engine: str,
        resumed_after: int | None = None,
        refused_nodes: Mapping[int, str] | None = None,
    ) -> None:
        """Create the ledger and record the study's start and the discovery replies.

        When a run resumes after ``resumed_after`` completed rounds, the ledger of
        the interrupted run is kept as a segment (``coordinator.segment-N.jsonl``
        with its public key) and the new ledger's ``study-started`` record names
        it with its final hash, so the segments form one verifiable chain.
        """
        self._sites = dict(sites)
        folder = self.out_dir / GOVERNANCE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        resumed_from = (
            set_aside_segment(folder, resumed_after) if resumed_after is not None else None
        )
        public = folder / COORDINATOR_PUBLIC_KEY
        tmp = public.with_name(f".{public.name}.tmp")
        tmp.write_bytes(public_key_pem(self._key.public_key()))
        tmp.replace(public)
        self._ledger = Ledger.open(
            folder / COORDINATOR_LEDGER,
            self._key,
            role="coordinator",
            owner="coordinator",
            new=True,
        )
        run = self.grid.run
        found = versions()
        self._ledger.append(
            "study-started",
            {
                "study_name": self.study.name,
                "study_hash": self.study.hash,
                "study": self.study.to_plain(),
                "code": _code(run),
                "versions": {
                    "lhs-federated": found["packages"].get("lhs-federated"),
                    "flwr": found["packages"].get("flwr"),
                    "python": found["python"],
                },
                "engine": engine,
                "run_id": run.run_id,
                "participants": [
                    {"site": name, "node_id": node} for node, name in sorted(sites.items())
                ],
                "key": {
                    "fingerprint": fingerprint(self._key.public_key()),
                    "made_for_this_run": not self._key_given,
                },
                **({"resumed_from": resumed_from} if resumed_from else {}),
                # nodes refused at discovery (not bound to a site key), with the reason
                **(
                    {
                        "refused_nodes": [
                            {"node_id": n, "reason": r} for n, r in refused_nodes.items()
                        ]
                    }
                    if refused_nodes
                    else {}
                ),
            },
        )
        pending, self._pending = self._pending, []
        self._append_many(pending)

    def pushed(self, messages: Iterable[Message]) -> None:
        """Note which node each pushed message went to, to attribute its reply."""
        self._addressed.update(addressees(messages))

    def sent(self, messages: list[Message]) -> None:
        """Note what each site was sent; a training batch starts a round."""
        shared: dict[int, tuple[dict[str, np.ndarray] | None, str | None]] = {}
        for message in messages:  # a strategy sends one ArrayRecord to every site: decode once
            arrays = message.content.get(records.ARRAYS)
            if id(arrays) not in shared:
                decoded = (
                    records.from_array_record(arrays) if isinstance(arrays, ArrayRecord) else None
                )
                shared[id(arrays)] = (decoded, records.hash_arrays(decoded) if decoded else None)
            self._sent[(message.metadata.dst_node_id, message.metadata.message_type)] = _Sent(
                _round_of(message), *shared[id(arrays)]
            )
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if not train:
            return
        first = self._sent[(train[0].metadata.dst_node_id, MessageType.TRAIN)]
        self._append(
            "round-started",
            {
                "round": first.round,
                "sampled_sites": sorted(self._site(m.metadata.dst_node_id) for m in train),
                "config_hash": content_hash(
                    RecordDict({records.CONFIG: train[0].content[records.CONFIG]})
                ),
                "arrays_hash": first.arrays_hash,
            },
        )

    def received(self, replies: Iterable[Message]) -> None:
        """Record one ``site-reply`` per reply (one fsync for the whole batch)."""
        batch = []
        for node, reply in sorted(
            ((replying_node(r, self._addressed), r) for r in replies),
            key=lambda item: self._site(item[0]),
        ):
            meta = reply.metadata
            digest = digest_reply(reply)
            sent = self._sent.get((node, meta.message_type), _Sent(0, None, None))
            norm = None
            if digest.status == "ok" and sent.arrays and records.ARRAYS in reply.content:
                returned = records.from_array_record(reply.content[records.ARRAYS])
                norm = update_norm(sent.arrays, returned)
            data = {
                "stage": _STAGES.get(meta.message_type, meta.message_type),
                "round": sent.round,
                "node_id": node,
                "message_id": meta.reply_to_message_id,
                "status": digest.status,
                "content_hash": digest.content_hash,
                "size": digest.size,
                "arrays_hash": digest.arrays_hash,
                "sent_arrays_hash": sent.arrays_hash,
                "examples": digest.examples,
                "update_norm": norm,
                "epsilon": digest.epsilon,
                "error_code": digest.error_code,
                "detail": digest.detail,
            }
            head = reply.content.get(records.SITE_LEDGER) if digest.status == "ok" else None
            if isinstance(head, ConfigRecord) and {"seq", "hash"} <= set(head):
                data["site_ledger_head"] = {"seq": int(head["seq"]), "hash": str(head["hash"])}
            batch.append(("site-reply", data))
        self._append_many(batch)

    def aggregated(
        self,
        server_round: int,
        arrays: dict[str, np.ndarray],
        metrics: MetricRecord | None,
        contributors: list[str],
        failed: Mapping[str, str],
    ) -> None:
        """Record the round's new global model and aggregate metrics."""
        self._append(
            "round-aggregated",
            {
                "round": server_round,
                "arrays_hash": records.hash_arrays(arrays),
                "metrics": dict(metrics.items()) if metrics is not None else {},
                "contributors": contributors,
                "failed": dict(failed),
            },
        )

    def evaluated(
        self, server_round: int, reports: Mapping[str, MetricReport], failed: Mapping[str, str]
    ) -> None:
        """Record the per-site metrics of the round's global model."""
        self._append(
            "evaluation",
            {
                "round": server_round,
                "per_site": {site: dict(report.values) for site, report in reports.items()},
                "undefined": {s: dict(r.undefined) for s, r in reports.items() if r.undefined},
                "failed": dict(failed),
            },
        )

    def record(self, kind: str, data: dict[str, Any]) -> None:
        """Append one record of another kind (the learning loop's findings and decisions)."""
        self._append(kind, data)

    def finish(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Record the study's end; return what ``summary.json`` says about the ledger.

        ``study-finished`` names the final model and the files written so far;
        the ledger stays open for :meth:`seal`, which follows once
        ``summary.json`` and every other reader's file is written, and which
        the summary names by its sequence number (``sealed_seq``).
        """
        finished = self._require().append(
            "study-finished",
            {
                "status": "completed",
                "final_model_hash": records.hash_arrays(arrays),
                "rounds": self.study.rounds,
                "result_files": hash_result_files(self.out_dir),
            },
        )
        return {
            "file": f"{GOVERNANCE_DIR}/{COORDINATOR_LEDGER}",
            "public_key": f"{GOVERNANCE_DIR}/{COORDINATOR_PUBLIC_KEY}",
            "key_fingerprint": fingerprint(self._key.public_key()),
            "ledger_id": self._require().ledger_id,
            "finished_seq": finished.seq,
            "finished_hash": finished.hash,
            "sealed_seq": finished.seq + 1,
        }

    def seal(self) -> tuple[list[str], dict[str, str]]:
        """Close the ledger over every reader's file, then tell each site its final hash.

        Returns the sites told and those not told (with why), which also go to
        the run's log: nothing may be written into the sealed files.
        """
        self._closed = True
        sealed = self._require().append(SEAL, seal_files(self.out_dir))
        return self._close_sites(sealed.seq, sealed.hash, "completed")

    def fail(self, error: BaseException) -> None:
        """Close the ledger with ``study-failed``, unless it was never opened or is closed.

        The record hashes every file the failed run leaves (``failure.json``
        included), as a seal does.
        """
        if self._ledger is None or self._closed:
            return
        self._closed = True
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        self._ledger.append(
            "study-failed", {"status": "failed", "error": message, **seal_files(self.out_dir)}
        )

    def _close_sites(self, seq: int, digest: str, status: str) -> tuple[list[str], dict[str, str]]:
        config = records.study_config(self.study)
        config.update(
            {
                LEDGER_ID: self._require().ledger_id,
                FINAL_SEQ: seq,
                FINAL_HASH: digest,
                STUDY_STATUS: status,
            }
        )
        messages = []
        for node in sorted(self._sites):
            message = Message(
                RecordDict({records.CONFIG: ConfigRecord(dict(config))}), node, CLOSE_TYPE
            )
            self.stamp(message)
            messages.append(message)
        timeout = self.study.federation.round_timeout
        replies = list(self.grid.inner.send_and_receive(messages, timeout=timeout))
        addressed = addressees(messages)
        notified, not_notified = [], {}
        for reply in replies:
            site = self._site(replying_node(reply, addressed))
            if reply.has_error():
                not_notified[site] = str(reply.error.reason)
            else:
                notified.append(site)
        answered = {replying_node(r, addressed) for r in replies}
        for node in self._sites:
            if node not in answered:
                not_notified[self._site(node)] = f"no reply within {timeout:g} s"
        return sorted(notified), dict(sorted(not_notified.items()))

    def _append(self, kind: str, data: dict[str, Any]) -> None:
        self._append_many([(kind, data)])

    def _append_many(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        if self._ledger is None:  # before the run folder exists: discovery replies
            self._pending += batch
            return
        named = [
            (kind, {"site": self._site(data["node_id"]), **data} if "node_id" in data else data)
            for kind, data in batch
        ]
        self._ledger.append_many(named)

    def _require(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the coordinator ledger is not open yet; call open() first")
        return self._ledger

    def _site(self, node: int) -> str:
        return self._sites.get(node, f"node-{node}")


@dataclass(frozen=True)
class _Sent:
    """What one site was sent in the current stage."""

    round: int
    arrays: dict[str, np.ndarray] | None
    arrays_hash: str | None


class AuditedGrid(GridWrapper):
    """A Grid wrapper that shows the audit every message sent and reply received.

    Parameters
    ----------
    grid : Grid
        The engine's grid.
    audit : CoordinatorAudit
        Where messages and replies are recorded.
    """

    def __init__(self, grid: Grid, audit: CoordinatorAudit) -> None:
        super().__init__(grid)
        self._audit = audit

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Stamp and note the messages, then push them."""
        messages = self._outgoing(messages)
        message_ids = list(self.inner.push_messages(messages))
        self._audit.pushed(messages)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies and record them."""
        replies = list(self.inner.pull_messages(message_ids))
        self._audit.received(replies)
        return replies

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = self._outgoing(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self._audit.pushed(messages)
        self._audit.received(replies)
        return replies

    def _outgoing(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for message in messages:
            self._audit.stamp(message)
        self._audit.sent(messages)
        return messages


def set_aside_segment(folder: Path, after_round: int) -> dict[str, Any] | None:
    """Keep an interrupted run's ledger as a numbered segment; say where it ends.

    Returns None if the interrupted run never opened a ledger.
    """
    ledger = folder / COORDINATOR_LEDGER
    if not ledger.is_file():
        return None
    number = 1 + len(list(folder.glob(SEGMENT_GLOB)))
    moved = folder / segment_name(number)
    entries = load_entries(ledger)
    os.replace(ledger, moved)
    os.replace(folder / COORDINATOR_PUBLIC_KEY, moved.with_suffix(".pub"))
    return {
        "file": moved.name,
        "public_key": moved.with_suffix(".pub").name,
        "ledger_id": entries[0].data.get("ledger_id"),
        "final_seq": entries[-1].seq,
        "final_hash": entries[-1].hash,
        "after_round": after_round,
    }


def _code(run: Run) -> dict[str, str]:
    if run.fab_hash:
        return {"kind": FAB, "hash": run.fab_hash}
    return {"kind": INSTALLED, "hash": installed_code_hash()}


def _round_of(message: Message) -> int:
    config = message.content.get(records.CONFIG)
    return int(config.get(records.ROUND, 0)) if isinstance(config, ConfigRecord) else 0
