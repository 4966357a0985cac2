"""Seeded per-site train/test splits, stratified where the classes allow."""

from __future__ import annotations

import zlib

import numpy as np
from sklearn.model_selection import train_test_split

from lhs_federated.data.encoding import SiteTable


def split_site(
    table: SiteTable, *, test_fraction: float, seed: int, shared_seed: bool = False
) -> tuple[SiteTable, SiteTable]:
    """Split one site's rows into a train and a test part.

    The split is stratified by outcome when each class has at least two rows
    (otherwise a stratified split is impossible) and depends only on the seed
    and the site's name, so adding a site never changes the others' splits.

    Parameters
    ----------
    table : SiteTable
        The site's cleaned rows.
    test_fraction : float
        Share of rows held out for testing, in (0, 1).
    seed : int
        The study's split seed.
    shared_seed : bool
        Seed every site's split with ``seed`` itself instead of a seed derived
        from it and the site's name: FLamby's protocol (``random_state=43`` at
        every centre), kept so its benchmark split can be reproduced exactly.
    """
    rows = np.arange(len(table.outcome))
    counts = np.bincount(table.outcome, minlength=2)
    stratify = table.outcome if counts.min() >= 2 else None
    train_rows, test_rows = train_test_split(
        rows,
        test_size=test_fraction,
        random_state=seed if shared_seed else site_seed(seed, table.site),
        stratify=stratify,
    )
    return table.subset(np.sort(train_rows)), table.subset(np.sort(test_rows))


def site_seed(seed: int, site: str, *salt: int) -> int:
    """A 32-bit seed derived from a study seed, a site name and optional salt.

    Seeds per site and per round come from here, so results do not depend on
    the order in which an engine happens to run the sites.
    """
    sequence = np.random.SeedSequence([seed, zlib.crc32(site.encode()), *salt])
    return int(sequence.generate_state(1)[0])
