"""Preflight: whether a study can run on its sites, checked before any work starts.

A federated run that cannot succeed should say so in seconds, not after its
first round: a study that needs six training replies when two sites are too
small to train fails every round, and a results folder that already holds a
run is refused only once the sites are connected. :func:`check_sites` reads the
sites' summaries (what every site discloses before training: its counts, with
those below its minimum cell size withheld) and either raises one error that
names each site at fault and the setting that fixes it, or returns warnings
worth a reader's attention (sites that will refuse to train, training splits
with few cases of one class). The simulation runs it before an engine starts,
and the coordinator's loop (every engine, deployment included) runs it after
discovery, before the results folder is created.

No Flower here: the checks are arithmetic on the study and the summaries.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lhs_federated.errors import ConfigError, StudyRunError
from lhs_federated.learning.site import SiteSummary
from lhs_federated.study import Study


class ResultsFolderExists(ConfigError):  # noqa: N818 - a refusal, as SiteRefusal
    """The results folder named for a new run already holds files (never touched)."""


def check_out_dir(out_dir: Path) -> None:
    """Refuse a results folder that exists and is not empty, before any work.

    Raises
    ------
    ResultsFolderExists
        Naming the folder and what to do instead.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        holds = " (it holds a run)" if (out_dir / "study.resolved.toml").exists() else ""
        raise ResultsFolderExists(
            f"results folder {str(out_dir)!r} already exists and is not empty{holds}; "
            "choose another --out folder (a stopped deployed run continues with "
            "`lhs-fed server resume RUN_DIR`)."
        )


def can_train(summary: SiteSummary, study: Study) -> bool:
    """Whether a site will train, by the rule it applies itself.

    A site refuses to train on fewer rows than
    :meth:`~lhs_federated.privacy.spec.PrivacySpec.rows_to_train` (the study's
    ``privacy.min_train_rows`` or its own minimum cell size). A count below the
    cell size reaches the coordinator withheld (``None``), so a withheld
    training count always means a refusal, and a disclosed one is compared with
    the study's minimum.
    """
    return summary.n_train is not None and summary.n_train >= study.privacy.min_train_rows


def check_sites(study: Study, summaries: Iterable[SiteSummary]) -> list[str]:
    """Check that the study can run on these sites; return what a reader should know.

    Parameters
    ----------
    study : Study
        The resolved study.
    summaries : iterable of SiteSummary
        Every site's summary, as the coordinator receives it.

    Returns
    -------
    list of str
        Warnings (one sentence each): sites that will refuse to train, and
        training or test splits with few cases.

    Raises
    ------
    StudyRunError
        If the study asks for more sites than it has, or fewer sites can train
        than a round needs; the message names the sites and the fix.
    """
    summaries = list(summaries)
    names = [s.name for s in summaries]
    min_sites = study.federation.min_sites
    if min_sites is not None and min_sites > len(summaries):
        raise StudyRunError(
            f"federation.min_sites = {min_sites}, but the study has {len(summaries)} sites "
            f"({', '.join(names)}); set federation.min_sites = {len(summaries)} or fewer."
        )
    needed = min_sites or len(summaries)
    small = [s for s in summaries if not can_train(s, study)]
    trainable = len(summaries) - len(small)
    limit = study.privacy.min_train_rows
    why = ", ".join(f"{s.name} ({_train_rows(s)})" for s in small)
    if trainable < needed:
        required = (
            f"federation.min_sites = {min_sites}"
            if min_sites is not None
            else "federation.min_sites is not set, so every site"
        )
        fixes = [f"set federation.min_sites = {trainable}"] if trainable else []
        fixes += [
            "leave the small sites out with data.sites",
            f"or lower privacy.min_train_rows (now {limit})",
        ]
        raise StudyRunError(
            f"{len(small)} of {len(summaries)} sites cannot train: {why}; a site refuses to "
            f"train on fewer rows than privacy.min_train_rows ({limit}) or its minimum cell "
            f"size. Each round needs {needed} training updates ({required}), so the run "
            f"would fail in round 1. Fix: {', '.join(fixes)}."
        )
    warnings = []
    if small:
        warnings.append(
            f"{len(small)} of {len(summaries)} sites will refuse to train every round "
            f"(fewer training rows than privacy.min_train_rows = {limit} or their minimum "
            f"cell size): {why}; they are still scored."
        )
    return warnings + _class_balance(summaries, study.sites.min_cell_size)


def _train_rows(summary: SiteSummary) -> str:
    if summary.n_train is None:
        return "training rows fewer than its minimum cell size"
    return f"{summary.n_train} training rows"


def _class_balance(summaries: list[SiteSummary], min_cell_size: int) -> list[str]:
    """Warnings about sites whose splits hold few cases of one class, one per kind.

    No count is named: a withheld count is below the site's minimum cell size,
    and a negative count derived from two disclosed ones is only compared
    with the study's (``sites.min_cell_size``).
    """
    few_positive = [
        s.name for s in summaries if s.n_train is not None and s.positives_train is None
    ]
    few_negative = [
        s.name
        for s in summaries
        if s.n_train is not None
        and s.positives_train is not None
        and s.n_train - s.positives_train < min_cell_size
    ]
    small_test = [s.name for s in summaries if s.n_test is None or s.positives_test is None]
    positive = (
        "fewer positive training cases than the minimum cell size (possibly none): the "
        "model learns little about the event there"
    )
    negative = (
        f"fewer negative training cases than the minimum cell size ({min_cell_size}; possibly none)"
    )
    test = (
        "test splits with fewer rows or positive cases than the minimum cell size: their "
        "metrics rest on very few patients"
    )
    kinds = ((few_positive, positive), (few_negative, negative), (small_test, test))
    return [
        f"{'site' if len(names) == 1 else 'sites'} {', '.join(names)}: {what}."
        for names, what in kinds
        if names
    ]
