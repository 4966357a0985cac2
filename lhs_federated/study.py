"""The study: one federated learning protocol, from a TOML file to a hash.

A study names the outcome and data contract, the model, the strategy, the
rounds, local training and evaluation. It is loaded once at the boundary
(:func:`load_study`), checked against the declarations below, and *resolved*:
every default is made explicit, the contract is inlined and relative paths are
made absolute. The resolved study is what runs, what is written beside the
results (``study.resolved.toml``) and what its hash covers: the SHA-256 of its
canonical JSON, which sites approve and ledgers record.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w

from lhs_federated.config import build, read_toml, setting, to_plain
from lhs_federated.data.contract import (
    PERIOD_EXAMPLES,
    PERIOD_PATTERNS,
    DataContract,
    contract_from,
)
from lhs_federated.data.omop.definition import OmopSpec, resolve_omop
from lhs_federated.data.synthetic import SYNTHETIC_INDEX_DATE, SyntheticCohort
from lhs_federated.errors import EXIT_INTERNAL, ConfigError, LhsError
from lhs_federated.privacy.spec import PrivacySpec, check_privacy

# Upper bounds of the settings below: far beyond any real study, low enough that a
# typo or a hostile value (rounds = 1e9, an MLP of 100000 x 100000) is an error at
# load with the accepted range, not a worker held for weeks.
MAX_ROUNDS = 10_000
MAX_STEPS = 100_000
MAX_LEARNING_RATE = 10.0
MAX_LAYER_WIDTH = 4096
MAX_HIDDEN_LAYERS = 16
MAX_EPSILON = 1000.0
WEEK = 7 * 24 * 3600.0

DEFAULT_DESCRIPTION = (
    "Ten-year cardiovascular risk, logistic regression, FedAvg over four synthetic sites"
)


@dataclass(frozen=True)
class DataSpec:
    """Where the sites' data come from and how each site splits it."""

    source: Literal["synthetic", "uci-heart", "folder", "omop"] = setting(
        "synthetic",
        doc="synthetic (built-in generator), uci-heart (the four hospitals' files), "
        "folder (one CSV/Parquet file per site) or omop (each site's OMOP CDM database, "
        "as [data.omop] defines the table)",
    )
    path: str | None = setting(None, doc="folder holding the files (uci-heart, folder)")
    contract: DataContract | str | None = setting(
        None,
        doc="built-in contract name, a contract TOML path, or the contract inline; "
        "default: the source's own (folder: contract.toml in the folder)",
    )
    sites: tuple[str, ...] | None = setting(None, doc="use only these sites, in this order")
    csv_separator: Literal["auto", ",", ";", "\t", "|"] = setting(
        "auto", doc="folder: the CSV files' field separator (auto: detected in each file)"
    )
    csv_decimal: Literal["auto", ".", ","] = setting(
        "auto",
        doc="folder: the CSV files' decimal mark (auto: a decimal comma is detected in "
        "files whose fields are not comma-separated)",
    )
    test_fraction: float = setting(0.3, doc="share of each site's rows held out", gt=0, lt=1)
    split_seed: int | None = setting(None, doc="seed of the train/test splits (default: seed)")
    split_seeding: Literal["per-site", "shared"] = setting(
        "per-site",
        doc="per-site: each site's split seeded from split_seed and its name (adding a site "
        "changes no other split); shared: every site split with split_seed itself (FLamby)",
    )
    evaluate_on: Literal["test", "validation"] = setting(
        "test",
        doc="what models are scored on: each site's test split, or a validation split carved "
        "from its training split (to choose hyperparameters without touching test)",
    )
    validation_fraction: float = setting(
        0.2,
        doc="share of each site's training rows held out when evaluate_on = 'validation'",
        gt=0,
        lt=1,
    )
    synthetic: SyntheticCohort = setting(
        default_factory=SyntheticCohort, doc="knobs of the synthetic cohort"
    )
    train_periods: tuple[str, ...] | None = setting(
        None,
        doc='periods whose rows the study uses (e.g. ["2020Q1..2020Q4"]), split into '
        "train and test; with evaluate_periods, all of them train (needs the contract's "
        "index_date; default: every row)",
    )
    evaluate_periods: tuple[str, ...] | None = setting(
        None,
        doc="periods whose rows are every site's test rows (temporal validation, "
        "monitoring); default: a test split of the training periods",
    )
    omop: OmopSpec | None = setting(
        None, doc="source omop: the cohort, outcome and features in OMOP CDM terms"
    )


@dataclass(frozen=True)
class PreprocessingSpec:
    """How encoded features are imputed and scaled."""

    scaling: Literal["federated", "site", "none"] = setting(
        "federated",
        doc="federated: global means and scales from a federated-statistics round; "
        "site: each site's own (FLamby's protocol); none: inputs used as encoded",
    )
    one_hot: Literal["all-levels", "drop-first"] = setting(
        "all-levels", doc="one indicator per contract level, or without the first level"
    )
    indicators: Literal["centred", "standardised"] = setting(
        "centred",
        doc="binary and one-hot columns: centred (share of ones subtracted) and divided by "
        "0.5, not by their SD (tiny for rare levels, withheld at small sites); or standardised",
    )
    std_divisor: Literal["n", "n-1"] = setting(
        "n", doc="divisor of the variance behind each scale: n (population) or n-1 (sample; FLamby)"
    )


@dataclass(frozen=True)
class ModelSpec:
    """The model family and its hyperparameters."""

    name: str = setting("logistic", doc="model family: logistic or mlp")
    hidden_layers: tuple[int, ...] = setting(
        (32,), doc="mlp: width of each hidden layer", ge=1, le=MAX_LAYER_WIDTH
    )
    dropout: float = setting(0.0, doc="mlp: dropout after each hidden layer", ge=0, lt=1)
    warm_start: str | None = setting(
        None,
        doc="start from a release's weights and preprocessing: 'registry:NAME@VERSION' "
        "(an update study of the learning loop; default: a fresh model)",
    )
    registry: str | None = setting(
        None, doc="registry folder of warm_start (default: registry/ beside the study file)"
    )

    def __post_init__(self) -> None:
        if len(self.hidden_layers) > MAX_HIDDEN_LAYERS:
            raise ValueError(
                f"model.hidden_layers has {len(self.hidden_layers)} layers; at most "
                f"{MAX_HIDDEN_LAYERS} are accepted"
            )


@dataclass(frozen=True)
class StrategySpec:
    """The Flower strategy that samples sites and aggregates their updates."""

    name: str = setting("fedavg", doc="strategy name from the registry (see `lhs-fed strategies`)")
    fraction_train: float = setting(
        1.0, doc="share of connected sites asked to train each round", gt=0, le=1
    )
    params: dict[str, Any] = setting(
        default_factory=dict,
        doc="keyword arguments of the Flower strategy (e.g. proximal_mu for fedprox)",
    )


@dataclass(frozen=True)
class TrainingSpec:
    """Local training at each site, each round."""

    epochs: int | None = setting(
        None, doc="passes over the site's training rows (default 1)", ge=1, le=1000
    )
    steps: int | None = setting(None, doc="optimiser steps instead of epochs", ge=1, le=MAX_STEPS)
    batch_size: int = setting(32, doc="rows per optimiser step", ge=1, le=1_000_000)
    optimizer: Literal["sgd", "adam"] = setting("sgd", doc="local optimiser")
    learning_rate: float = setting(0.2, doc="local learning rate", gt=0, le=MAX_LEARNING_RATE)
    momentum: float = setting(0.0, doc="sgd momentum", ge=0, lt=1)
    weight_decay: float = setting(0.0, doc="L2 penalty", ge=0, le=100)

    def __post_init__(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"set either epochs ({self.epochs}) or steps ({self.steps}), not both")


@dataclass(frozen=True)
class EvaluationSpec:
    """How each site's test split is scored every round."""

    threshold: float = setting(
        0.5, doc="probability above which a case is called positive", gt=0, lt=1
    )
    calibration_bins: int = setting(10, doc="equal-width bins of the ECE", ge=2, le=100)
    min_test_cases: int | None = setting(
        None,
        doc="a site's metrics count in the federation's means only with at least this many "
        "test rows and of each outcome class (default: sites.min_cell_size); others are "
        "shown, marked",
        ge=1,
    )


@dataclass(frozen=True)
class BaselineSpec:
    """The pooled and local-only models a simulated study is compared with.

    By default each baseline gets the optimisation the federation gave its
    rows (see :mod:`lhs_federated.research.baselines`); ``epochs``, ``optimizer`` and
    ``learning_rate`` replace that budget with a fixed protocol.
    """

    enabled: bool = setting(True, doc="train and report the baselines after a simulated run")
    epochs: int | None = setting(
        None,
        doc="passes over its rows for each baseline model (default: the federation's budget)",
        ge=1,
    )
    optimizer: Literal["sgd", "adam"] | None = setting(
        None, doc="optimiser of the baselines (default: training.optimizer)"
    )
    learning_rate: float | None = setting(
        None, doc="learning rate of the baselines (default: training.learning_rate)", gt=0
    )
    pooled_scaling: Literal["sites", "pooled"] = setting(
        "sites",
        doc="the pooled model's training rows: sites (each row scaled as its site scales it "
        "in the federation) or pooled (standardised with the pooled training rows' own "
        "statistics, as FLamby's pooled baseline); scored at each site as the site scales",
    )


@dataclass(frozen=True)
class FederationSpec:
    """What the coordinator tolerates: slow, missing and failing sites."""

    min_sites: int | None = setting(
        None, doc="fewest training replies a round needs (default: every site)", ge=1
    )
    round_timeout: float = setting(
        600.0, doc="seconds to wait for the sites in each stage", gt=0, le=WEEK
    )
    connect_timeout: float = setting(
        120.0, doc="seconds to wait for sites to connect", gt=0, le=WEEK
    )


@dataclass(frozen=True)
class SitesSpec:
    """Settings simulated sites apply (in deployment each site sets its own)."""

    min_cell_size: int = setting(10, doc="smallest count of people a site reports", ge=1, le=1000)
    epsilon_budget: float = setting(
        10.0, doc="sample-dp: each site's total epsilon over all studies", gt=0, le=MAX_EPSILON
    )
    budget_delta: float = setting(
        1e-5, doc="delta at which each site's total epsilon is stated", gt=0, lt=1
    )
    state_dir: str | None = setting(
        None,
        doc="folder of the sites' privacy ledgers, one subfolder per site; name one to "
        "keep budgets across studies (default: site-state/ in the run folder)",
    )


@dataclass(frozen=True)
class GovernanceSpec:
    """How simulated sites approve the study (deployed sites keep their own approvals)."""

    preapproved: bool = setting(
        False,
        doc="simulation: the simulated sites approve this study by its declaration, "
        "recorded as such in their ledgers; deployed sites ignore it",
    )
    site_folders: str | None = setting(
        None,
        doc="simulation: folder with one site folder per simulated site (`lhs-fed site "
        "init`), whose approvals decide; default: new folders under the run's governance/sites",
    )

    def __post_init__(self) -> None:
        if self.preapproved and self.site_folders is not None:
            raise ValueError(
                "set either preapproved = true or site_folders (whose own approvals then "
                "decide), not both"
            )


@dataclass(frozen=True)
class Study:
    """One federated learning protocol; see the module docstring."""

    name: str = setting("default", doc="short name of the study, used for result folders")
    description: str = setting("", doc="what the study asks")
    seed: int = setting(42, doc="seed of model initialisation, splits and training")
    rounds: int = setting(10, doc="federated rounds", ge=1, le=MAX_ROUNDS)
    data: DataSpec = setting(default_factory=DataSpec, doc="data sources and splits")
    preprocessing: PreprocessingSpec = setting(
        default_factory=PreprocessingSpec, doc="imputation and scaling"
    )
    model: ModelSpec = setting(default_factory=ModelSpec, doc="the model")
    strategy: StrategySpec = setting(default_factory=StrategySpec, doc="the Flower strategy")
    training: TrainingSpec = setting(default_factory=TrainingSpec, doc="local training")
    evaluation: EvaluationSpec = setting(default_factory=EvaluationSpec, doc="evaluation")
    federation: FederationSpec = setting(default_factory=FederationSpec, doc="fault tolerance")
    sites: SitesSpec = setting(default_factory=SitesSpec, doc="simulated sites' settings")
    governance: GovernanceSpec = setting(
        default_factory=GovernanceSpec, doc="approval of the study at simulated sites"
    )
    privacy: PrivacySpec = setting(default_factory=PrivacySpec, doc="differential privacy")
    baselines: BaselineSpec = setting(
        default_factory=BaselineSpec, doc="pooled and local-only baselines (simulation only)"
    )

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(
                "name must be letters, digits, '-', '_' or '.' (it names folders); "
                f"got {self.name!r}"
            )

    @property
    def contract(self) -> DataContract:
        """The inlined contract of a resolved study."""
        if not isinstance(self.data.contract, DataContract):
            raise ConfigError("the study is not resolved: call resolve_study() first")
        return self.data.contract

    def to_plain(self) -> dict[str, Any]:
        """The study as plain TOML/JSON-ready data."""
        return to_plain(self)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces, UTF-8; what the hash covers."""
        return self._canonical_json

    @functools.cached_property
    def _canonical_json(self) -> str:
        # Computed once: a study is immutable, and every message carries it.
        return json.dumps(
            self.to_plain(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )

    @functools.cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON (hex)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def to_toml(self) -> str:
        """TOML text that loads back into this very study (same hash)."""
        header = f"# Resolved study {self.name!r}; study hash {self.hash}\n"
        return header + tomli_w.dumps(self.to_plain())

    def with_overrides(self, overrides: dict[str, Any]) -> Study:
        """A copy with dotted keys replaced (``{"training.learning_rate": 0.1}``).

        Overrides edit the study as it was written (before defaults were
        resolved), so that changing ``data.source`` also changes the default
        contract; the result is checked and resolved like a study read from a
        file.

        Raises
        ------
        ConfigError
            If a key does not exist or a value is invalid.
        """
        written, base_dir = getattr(self, "_written", (self.to_plain(), Path.cwd()))
        plain = copy.deepcopy(written)
        for dotted, value in overrides.items():
            table = plain
            *parents, last = dotted.split(".")
            for part in parents:
                table = table.setdefault(part, {})
                if not isinstance(table, dict):
                    raise ConfigError(f"override {dotted!r}: {part!r} is not a table")
            table[last] = value
        return finalise_study(plain, source="overrides", base_dir=base_dir)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Study:
        """Rebuild a resolved study from its canonical JSON."""
        try:
            plain = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: the study is not valid JSON ({exc})") from exc
        return build(cls, plain, source=source)


def load_study(path: str | Path | None = None) -> Study:
    """Read, check and resolve a study TOML file (``None``: the default study).

    Raises
    ------
    ConfigError
        If the file is missing or not TOML, or any key is unknown, of the wrong
        type or out of range; the message names the file and the key.
    """
    if path is None:
        return finalise_study(
            {"description": DEFAULT_DESCRIPTION, "governance": {"preapproved": True}},
            source="the default study",
            base_dir=Path.cwd(),
        )
    path = Path(path)
    return finalise_study(read_toml(path, what="study"), source=str(path), base_dir=path.parent)


def finalise_study(table: dict[str, Any], *, source: str, base_dir: Path) -> Study:
    """Build, resolve and check a study from a parsed table."""
    study = build(Study, table, source=source)
    study = check_study(resolve_study(study, base_dir=base_dir, source=source), source=source)
    # Remember the study as written, for with_overrides (not part of the study).
    object.__setattr__(study, "_written", (copy.deepcopy(table), base_dir))
    return study


def resolve_study(study: Study, *, base_dir: Path, source: str) -> Study:
    """Make every default explicit: contract inline, absolute paths, seeds, epochs."""
    data = study.data
    path = data.path
    if path is not None:
        path = str((base_dir / path).resolve()) if not Path(path).is_absolute() else path
    contract = data.contract
    dated_synthetic = data.source == "synthetic" and data.synthetic.periods > 1
    omop = data.omop
    if data.source == "omop" or omop is not None:
        omop, contract = resolve_omop(
            data.source,
            omop,
            contract,
            study_name=study.name,
            base_dir=base_dir,
            source=source,
        )
    if contract is None:
        contract = {"synthetic": "cardio-risk", "uci-heart": "uci-heart"}.get(data.source)
        if contract is None:
            if path is None:
                raise ConfigError(f"{source}: data.source = 'folder' needs data.path (the folder)")
            contract = str(Path(path) / "contract.toml")
    try:
        contract = contract_from(contract, base_dir=base_dir)
    except ConfigError as exc:
        raise ConfigError(f"{source}: data.contract: {exc.message}") from exc
    if dated_synthetic and contract.index_date is None:
        # The cohort's periods are its rows' index dates: the contract names them.
        contract = dataclasses.replace(contract, index_date=SYNTHETIC_INDEX_DATE, period="quarter")
    data = dataclasses.replace(
        data,
        path=path,
        contract=contract,
        omop=omop,
        split_seed=study.seed if data.split_seed is None else data.split_seed,
    )
    model = study.model
    if model.warm_start is not None:
        folder = Path(model.registry or "registry")
        folder = folder if folder.is_absolute() else (base_dir / folder).resolve()
        model = dataclasses.replace(model, registry=str(folder))
    training = study.training
    if training.epochs is None and training.steps is None:
        training = dataclasses.replace(training, epochs=1)
    governance = study.governance
    if governance.site_folders is not None:
        governance = dataclasses.replace(
            governance, site_folders=str((base_dir / governance.site_folders).resolve())
        )
    sites = study.sites
    if sites.state_dir is not None and not Path(sites.state_dir).is_absolute():
        sites = dataclasses.replace(sites, state_dir=str((base_dir / sites.state_dir).resolve()))
    return dataclasses.replace(
        study, data=data, model=model, training=training, governance=governance, sites=sites
    )


#: The study's parts whose checks need knowledge that lives above the ground: the
#: model families (PyTorch), the strategies' parameters and client-level DP's noise
#: calibration (Flower). The layers that own that knowledge register a check for
#: each part (:mod:`lhs_federated.apps.study_checks`), so the ground never reaches
#: up; :func:`check_study` runs them in this order.
PART_CHECKS = ("model", "strategy", "client-dp")

StudyCheck = Callable[["Study", str], None]
_part_checks: dict[str, StudyCheck] = {}


def register_part_check(part: str, check: StudyCheck) -> None:
    """Register the check of one of the study's :data:`PART_CHECKS`.

    ``check(study, source)`` raises :class:`ConfigError` naming ``source`` and
    the key at fault.
    """
    if part not in PART_CHECKS:
        raise ValueError(f"unknown study part {part!r}; parts: {', '.join(PART_CHECKS)}")
    _part_checks[part] = check


def check_study(study: Study, *, source: str) -> Study:
    """Cross-field checks that need the resolved study and the registries.

    Raises
    ------
    ConfigError
        Naming the file and the key at fault.
    LhsError
        (exit code 1) If the checks of the study's parts were never registered:
        a study is then refused rather than passed unchecked.
    """
    missing = [part for part in PART_CHECKS if part not in _part_checks]
    if missing:
        raise LhsError(
            f"the checks of the study's {', '.join(missing)} are not registered; import "
            "lhs_federated.apps.study_checks (as lhs_federated.load_study does) before "
            "loading a study.",
            exit_code=EXIT_INTERNAL,
        )
    _part_checks["model"](study, source)
    _part_checks["strategy"](study, source)
    check_privacy(study, source=source)
    _part_checks["client-dp"](study, source)
    if study.strategy.name == "scaffold" and study.privacy.sample_dp:
        raise ConfigError(
            f"{source}: strategy.name = 'scaffold' cannot run with privacy.mode = 'sample-dp': "
            "its drift correction is not part of the DP-SGD step Opacus accounts for. "
            "Use fedavg or fedprox with sample-level DP."
        )
    if study.strategy.name == "fedavg-ft" and study.privacy.mode != "none":
        raise ConfigError(
            f"{source}: strategy.name = 'fedavg-ft' cannot run with privacy.mode = "
            f"{study.privacy.mode!r}: its local fine-tuning before each evaluation trains on "
            "the site's rows outside the DP guarantee. Use fedavg (or fedprox) with DP."
        )
    if study.data.source in ("uci-heart", "folder") and study.data.path is None:
        raise ConfigError(
            f"{source}: data.source = {study.data.source!r} needs data.path, the folder "
            "holding the files."
        )
    check_periods(study, source=source)
    if study.baselines.pooled_scaling == "pooled" and study.preprocessing.scaling == "none":
        raise ConfigError(
            f"{source}: baselines.pooled_scaling = 'pooled' standardises the pooled model's "
            "rows, but preprocessing.scaling = 'none' scales no site's: use 'sites', or "
            "scaling 'site' or 'federated'."
        )
    if study.preprocessing.scaling == "none" and study.contract.missing == "impute":
        raise ConfigError(
            f"{source}: preprocessing.scaling = 'none' cannot impute missing values "
            f"(contract {study.contract.name!r} has missing = 'impute'): use scaling "
            "'federated' or 'site', whose statistics give the imputed means."
        )
    return study


def check_periods(study: Study, *, source: str) -> None:
    """Periods named only on dated data, each written as the contract's kind of period.

    Raises
    ------
    ConfigError
        Naming the key and the period at fault.
    """
    contract = study.contract
    for key in ("train_periods", "evaluate_periods"):
        periods = getattr(study.data, key)
        if periods is None:
            continue
        if contract.index_date is None:
            raise ConfigError(
                f"{source}: data.{key} selects rows by period, but contract "
                f"{contract.name!r} names no index_date column: its data are one period. "
                'Name the date column in the contract (index_date = "...") or drop the key.'
            )
        if not periods:
            raise ConfigError(f"{source}: data.{key} is empty; name at least one period.")
        pattern = PERIOD_PATTERNS[contract.period]
        for item in periods:
            start, _, end = item.partition("..")
            if not all(re.fullmatch(pattern, p) for p in (start, end or start)) or (
                end and end < start
            ):
                raise ConfigError(
                    f"{source}: data.{key}: {item!r} is not a {contract.period} "
                    f"(like {PERIOD_EXAMPLES[contract.period]!r}) or a range "
                    f"({PERIOD_EXAMPLES[contract.period]!r}..later)."
                )


def read_resolved_study(path: Path) -> Study:
    """Rebuild a study a run wrote (``study.resolved.toml``) exactly as it ran.

    The study was checked when the run started and is already resolved, so it
    is only rebuilt (as :meth:`Study.from_json` does for a message's study).
    """
    return build(Study, read_toml(path, what="resolved study"), source=str(path))


def write_study(study: Study, path: Path) -> None:
    """Write the resolved study as TOML, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(study.to_toml(), encoding="utf-8")
    tmp.replace(path)
