"""Data sources of simulated studies: each yields every site's raw table.

A source turns the study's ``[data]`` table into raw per-site tables; the
common path then validates each against the contract, encodes it and splits it
(:func:`load_sites`). New sources plug in by name in :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from lhs_federated.data.encoding import SiteTable, encode_features, finish_table, prepare_table
from lhs_federated.data.io import TABLE_SUFFIXES, read_table
from lhs_federated.data.omop.connection import Database
from lhs_federated.data.omop.extract import extract
from lhs_federated.data.omop.query import Schemas
from lhs_federated.data.periods import periods_of, rows_in_periods
from lhs_federated.data.split import split_site
from lhs_federated.data.synthetic import generate_cohort
from lhs_federated.data.uci_heart import load_uci_heart
from lhs_federated.data.validation import matches_levels, validate_table
from lhs_federated.errors import DataError
from lhs_federated.study import Study

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class RawSite:
    """One site's table as read, and where it came from."""

    name: str
    table: pd.DataFrame
    source: str


@dataclass(frozen=True)
class SiteData:
    """One site's cleaned rows, split into train and test."""

    name: str
    train: SiteTable
    test: SiteTable


def _synthetic(study: Study) -> list[RawSite]:
    tables = generate_cohort(study.data.synthetic, seed=study.seed)
    return [
        RawSite(name, table, f"synthetic cohort (seed {study.seed}), {name}")
        for name, table in tables.items()
    ]


def _uci_heart(study: Study) -> list[RawSite]:
    folder = study.data.path or ""
    tables = load_uci_heart(folder)
    return [RawSite(name, table, f"{folder}/{name}") for name, table in tables.items()]


def _folder(study: Study) -> list[RawSite]:
    folder = Path(study.data.path or "")
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} does not exist.")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in TABLE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise DataError(
            f"data folder {str(folder)!r} holds no site tables ({', '.join(TABLE_SUFFIXES)} files)."
        )
    stems = [p.stem for p in files]
    # A file's stem is its site's name, with the rule of a deployed site's name.
    unnamed = [p.name for p in files if not all(c.isalnum() or c in "-_." for c in p.stem)]
    if unnamed:
        raise DataError(
            f"data folder {str(folder)!r}: a file's name without its suffix is its site's "
            "name, which must be letters, digits, '-', '_' or '.'; rename "
            f"{', '.join(map(repr, unnamed))}."
        )
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise DataError(
            f"data folder {str(folder)!r} has two files for site(s) {', '.join(duplicated)}."
        )

    def read(path: Path) -> RawSite:
        table = read_table(
            path,
            na_values=study.contract.na_values,
            separator=study.data.csv_separator,
            decimal=study.data.csv_decimal,
        )
        return RawSite(path.stem, table, str(path))

    return each_or_all_errors(read, files, what="site files")


def _omop(study: Study) -> list[RawSite]:
    """Each simulated site's table extracted from its own OMOP database (``data.omop.databases``).

    A simulation extracts afresh each time; a deployed site uses its frozen
    snapshot instead (:mod:`lhs_federated.data.omop.snapshot`).
    """
    spec = study.data.omop
    if spec is None or not spec.databases:
        raise DataError(
            "data.omop.databases names no site database: a simulation of an OMOP study names "
            'each simulated site\'s SQLAlchemy URL (databases = { site-a = "duckdb:///a.duckdb" '
            "}); deployed sites name theirs in their site config."
        )
    schemas = Schemas(spec.cdm_schema, spec.vocabulary_schema)

    def read(site: str) -> RawSite:
        database = Database(spec.databases[site], schemas, site, f"data.omop.databases.{site}")
        return RawSite(site, extract(spec, database).table, database.where)

    return each_or_all_errors(read, list(spec.databases), what="site databases")


SOURCES: dict[str, Callable[[Study], list[RawSite]]] = {
    "synthetic": _synthetic,
    "uci-heart": _uci_heart,
    "folder": _folder,
    "omop": _omop,
}


def raw_sites(study: Study) -> list[RawSite]:
    """Every site's raw table, restricted and ordered by ``data.sites`` if set.

    Raises
    ------
    DataError
        If a named site does not exist in the source.
    """
    sites = SOURCES[study.data.source](study)
    if study.data.sites is None:
        return sites
    by_name = {site.name: site for site in sites}
    unknown = [name for name in study.data.sites if name not in by_name]
    if unknown:
        raise DataError(
            f"data.sites names {', '.join(map(repr, unknown))}, not found in the "
            f"{study.data.source} source (sites: {', '.join(by_name)})."
        )
    return [by_name[name] for name in study.data.sites]


def load_sites(study: Study) -> list[SiteData]:
    """Every simulated site's validated, encoded and split data.

    Cached per study (by hash), since each simulated site's ClientApp asks for
    its data every round.

    Raises
    ------
    DataError
        If any site's table breaks the contract; the message names the site
        and file, and lists every problem found.
    """
    return list(loaded_sites(study))


def loaded_sites(study: Study) -> tuple[SiteData, ...]:
    """:func:`load_sites` as the cached tuple itself, not a copy.

    For a simulated site that looks itself up with every message: copying a
    thousand sites' list to take one is most of the lookup.
    """
    adopted = _ADOPTED.get(study.hash)
    if adopted is not None:
        return adopted
    return _load_sites_cached(study.hash, study.to_json())


def adopt_prepared_sites(study_hash: str, sites: Sequence[SiteData]) -> None:
    """Make :func:`load_sites` of the study ``study_hash`` return ``sites`` in this process.

    A simulation engine's worker processes (Ray actors) take the sites that
    the coordinator's process prepared for that study, instead of each one
    generating, validating and encoding every site again (seconds per worker
    at 1000 sites). Only the latest study's sites are kept.
    """
    _ADOPTED.clear()
    _ADOPTED[study_hash] = tuple(sites)


_ADOPTED: dict[str, tuple[SiteData, ...]] = {}


@lru_cache(maxsize=4)
def _load_sites_cached(study_hash: str, study_json: str) -> tuple[SiteData, ...]:
    study = Study.from_json(study_json, source=f"study {study_hash[:12]}")
    raws = raw_sites(study)
    return tuple(prepare_sites(raws, study))


def prepare_sites(raws: list[RawSite], study: Study) -> list[SiteData]:
    """Every site's table validated, encoded and split, as :func:`prepare_site` does.

    Validating and encoding is per value, so the sites' tables are checked and
    encoded together, in one pass over their union (per-column pandas work
    costs milliseconds however small a table is: 25 s for 1000 sites one by
    one). If the union breaks the contract anywhere, or a site would fail a
    rule that concerns a whole table (no rows, other columns, one outcome
    class, nothing left after dropping rows), the sites are prepared one by
    one, so every error names its site and file exactly as before. A study that
    names periods prepares its sites one by one, each against the periods of
    the whole data set.

    Raises
    ------
    DataError
        If any site's table breaks the contract (every failing site named).
    """
    dated = study.data.train_periods is not None or study.data.evaluate_periods is not None
    together = None if dated else _prepare_together(raws, study)
    if together is not None:
        return together
    data_range = (
        periods_of([(r.table, r.name, r.source) for r in raws], study.contract) if dated else None
    )
    return each_or_all_errors(
        lambda raw: prepare_site(raw, study, data_range=data_range), raws, what="sites"
    )


def _prepare_together(raws: list[RawSite], study: Study) -> list[SiteData] | None:
    """The sites prepared from their union, or None where one site at a time must say why."""
    contract = study.contract
    columns = list(raws[0].table.columns) if raws else []
    if len(raws) < 2 or any(
        list(raw.table.columns) != columns or len(raw.table) == 0 for raw in raws
    ):
        return None
    union = pd.concat([raw.table for raw in raws], ignore_index=True)
    if validate_table(union, contract, file="(all sites)").errors:
        return None
    features = encode_features(union, contract, study.preprocessing.one_hot)
    label = union[contract.outcome.column]
    positive = matches_levels(label, contract.outcome.positive).to_numpy(dtype=np.int64)
    negative = matches_levels(label, contract.outcome.negative).to_numpy(dtype=bool)
    ends = np.cumsum([len(raw.table) for raw in raws])
    sites = []
    for raw, end in zip(raws, ends, strict=True):
        rows = slice(end - len(raw.table), end)
        if (positive[rows].sum() == 0) != (negative[rows].sum() == 0):
            return None  # one outcome class: validation names it for this site
        try:
            table = finish_table(features[rows], positive[rows], contract, raw.name, raw.source)
        except DataError:
            return None
        sites.append(_split(table, study, raw.name))
    return sites


def each_or_all_errors(
    function: Callable[[_Item], _Result], items: list[_Item], *, what: str
) -> list[_Result]:
    """``function`` of every item, or one :class:`DataError` with every item's error.

    A consortium's data teams fix their tables in one pass when a run names
    every site whose table fails, not only the first.
    """
    results, errors = [], []
    for item in items:
        try:
            results.append(function(item))
        except DataError as error:
            errors.append(error.message)
    if len(errors) == 1:
        raise DataError(errors[0])
    if errors:
        raise DataError(
            f"{len(errors)} of the {len(items)} {what} cannot be used:\n" + "\n".join(errors)
        )
    return results


def prepare_site(raw: RawSite, study: Study, *, data_range: list[str] | None = None) -> SiteData:
    """Validate, encode and split one site's raw table for ``study``.

    Simulated and deployed sites both go through here, so a deployed site's
    split is exactly the one a simulation of the same files would use. With
    ``data.evaluate_on = "validation"`` the test rows are set aside untouched
    and a second split, seeded differently, carves the validation rows (which
    then play the test rows' part) out of the training rows.

    A study that names periods uses only their rows (:mod:`lhs_federated.data.periods`):
    ``train_periods`` alone are split as above; with ``evaluate_periods`` the
    rows of the training periods all train (none: no training rows, as in a
    monitoring study) and every row of the evaluation periods is a test row.
    ``data_range`` is every period of the data set (all sites; default: this
    table's own), against which named periods are checked.
    """
    train_periods, evaluate_periods = study.data.train_periods, study.data.evaluate_periods
    dated = train_periods is not None or evaluate_periods is not None
    if dated and data_range is None:
        data_range = periods_of([(raw.table, raw.name, raw.source)], study.contract)

    def prepared(periods: tuple[str, ...] | None) -> SiteTable:
        rows = raw.table
        if periods is not None:
            rows = rows_in_periods(
                rows,
                study.contract,
                periods,
                site=raw.name,
                source=raw.source,
                data_range=data_range or [],
            )
        return prepare_table(
            rows,
            study.contract,
            site=raw.name,
            source=raw.source,
            one_hot=study.preprocessing.one_hot,
        )

    if evaluate_periods is not None:
        test = prepared(evaluate_periods)
        if train_periods is None:
            width = test.features.shape[1]
            train = SiteTable(raw.name, raw.source, np.empty((0, width)), np.empty(0, np.int64))
        else:
            train = prepared(train_periods)
        return SiteData(raw.name, train, test)
    return _split(prepared(train_periods), study, raw.name)


def _split(table: SiteTable, study: Study, name: str) -> SiteData:
    seed = study.data.split_seed if study.data.split_seed is not None else study.seed
    shared = study.data.split_seeding == "shared"
    train, test = split_site(
        table, test_fraction=study.data.test_fraction, seed=seed, shared_seed=shared
    )
    if study.data.evaluate_on == "validation":
        train, test = split_site(
            train, test_fraction=study.data.validation_fraction, seed=seed + 1, shared_seed=shared
        )
    return SiteData(name, train, test)
