"""A messy multi-site clinical table of our own making, as hospitals have them.

The shape of the table that exposed issue 10: six centres of 3 to 150 patients,
about forty binary and one-hot columns with rare levels (so small sites hold
fewer than the minimum cell size of ones in many of them), two numeric columns
with gaps, and an outcome with about 30% positives. Tests use small versions;
``benchmarks/real_data_check.py`` uses the full one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SITE_SIZES = (3, 8, 40, 70, 110, 150)
# Binary columns and their share of ones: several rare (2-6%).
BINARY = {f"flag_{k:02d}": share for k, share in enumerate(
    (0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
)}  # fmt: skip
# Categorical columns: level shares with rare last levels (26 one-hot columns).
CATEGORICAL = {
    "smoking": (0.55, 0.3, 0.12, 0.03),
    "admission": (0.5, 0.3, 0.15, 0.04, 0.01),
    "region": (0.4, 0.3, 0.2, 0.1),
    "insurance": (0.6, 0.25, 0.1, 0.05),
    "ward": (0.45, 0.3, 0.15, 0.07, 0.03),
    "ethnicity": (0.7, 0.15, 0.1, 0.05),
}
OUTCOME = "readmitted"


def messy_sites(
    sizes: tuple[int, ...] = SITE_SIZES, *, seed: int = 0, prevalence: float = 0.3
) -> dict[str, pd.DataFrame]:
    """One raw table per site (``site-1`` is the smallest), seeded.

    Every site holds both outcome classes (a site of three patients has one
    positive); the outcome depends on rare levels strongly, so a model that
    mis-scales them loses discrimination.
    """
    rng = np.random.default_rng(seed)
    weights_binary = rng.normal(0, 0.8, len(BINARY))
    weights_levels = {name: rng.normal(0, 0.9, len(shares)) for name, shares in CATEGORICAL.items()}
    tables: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}
    for k, n in enumerate(sizes, start=1):
        shift = rng.normal(0, 0.3)
        columns: dict[str, np.ndarray] = {}
        logit = np.full(n, shift)
        age = np.clip(rng.normal(62 + 3 * shift, 12, n), 18, 99).round()
        creatinine = np.clip(rng.lognormal(4.4, 0.3, n), 30, 600).round(1)
        logit += 0.03 * (age - 62) + 0.8 * (np.log(creatinine) - 4.4)
        for j, (name, share) in enumerate(BINARY.items()):
            values = (rng.random(n) < share).astype(int)
            columns[name] = values
            logit += weights_binary[j] * values
        for name, shares in CATEGORICAL.items():
            p = np.asarray(shares) * np.exp(rng.normal(0, 0.2, len(shares)))
            codes = rng.choice(len(shares), size=n, p=p / p.sum())
            columns[name] = np.array([f"L{c}" for c in codes])
            logit += weights_levels[name][codes]
        frame = pd.DataFrame({"age": age, "creatinine": creatinine, **columns})
        tables[f"site-{k}"] = (frame, logit)
    offset = _intercept(np.concatenate([logit for _, logit in tables.values()]), prevalence)
    out = {}
    for site, (frame, logit) in tables.items():
        n = len(frame)
        outcome = (rng.random(n) < 1 / (1 + np.exp(-logit - offset))).astype(int)
        if outcome.min() == outcome.max():  # a tiny site still needs both classes
            outcome[rng.integers(n)] = 1 - outcome[0]
        frame[OUTCOME] = outcome
        frame.loc[rng.random(n) < 0.05, "creatinine"] = np.nan
        frame.loc[rng.random(n) < 0.05, "smoking"] = np.nan
        out[site] = frame
    return out


def _intercept(logit: np.ndarray, prevalence: float) -> float:
    """The offset giving the wanted mean risk (bisection on the mean of the sigmoid)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        middle = (low + high) / 2
        if np.mean(1 / (1 + np.exp(-logit - middle))) < prevalence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def contract_toml() -> str:
    """The data contract of the messy table."""
    lines = [
        'name = "messy"',
        'missing = "impute"',
        f'[outcome]\ncolumn = "{OUTCOME}"\npositive = [1]\nnegative = [0]',
        '[[features]]\nname = "age"\ntype = "numeric"\nmin = 18\nmax = 100\nunit = "years"',
        '[[features]]\nname = "creatinine"\ntype = "numeric"\nmin = 20\nmax = 700\nunit = "umol/L"',
    ]
    lines += [f'[[features]]\nname = "{name}"\ntype = "binary"' for name in BINARY]
    for name, shares in CATEGORICAL.items():
        levels = ", ".join(f'"L{c}"' for c in range(len(shares)))
        lines.append(f'[[features]]\nname = "{name}"\ntype = "categorical"\nlevels = [{levels}]')
    return "\n\n".join(lines) + "\n"


def write_messy_folder(folder: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Write one CSV per site and ``contract.toml`` into ``folder``; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for site, frame in tables.items():
        frame.to_csv(folder / f"{site}.csv", index=False)
    (folder / "contract.toml").write_text(contract_toml(), encoding="utf-8")
    return folder
