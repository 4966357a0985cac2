"""Governance folders of simulated sites: the same records deployment writes.

A simulated site keeps a site folder like a deployed one (key, approvals
registry, ledger), so a simulated run leaves the same ledgers behind. Which
folder, and who approves, the study decides in its ``[governance]`` table:

- ``site_folders = "DIR"``: each simulated site uses ``DIR/<site>``, created
  beforehand with ``lhs-fed site init`` and approved with ``lhs-fed site
  approve`` like a real site; its approvals decide;
- otherwise each site gets a new folder under the run
  (``<run>/governance/sites/<site>``), created on its first message; with
  ``preapproved = true`` the site records the study's declaration as its
  approval (flagged ``preapproved``), and without it the site has approved
  nothing and refuses, as a real site would.

The code a simulated site approves is the installed lhs-federated package
(:func:`~lhs_federated.governance.code.installed_code_hash`).
"""

from __future__ import annotations

from pathlib import Path

from lhs_federated.errors import ConfigError
from lhs_federated.governance.site_folder import APPROVALS_FILE, LEDGER_FILE, SiteFolder
from lhs_federated.study import Study

PREAPPROVED_BY = "the study's declaration"
PREAPPROVED_REASON = (
    "simulation: the study declares its simulated sites pre-approved "
    "([governance] preapproved = true)"
)


def simulated_site_folder(run_sites: Path, site: str, study: Study, code_hash: str) -> SiteFolder:
    """The governance folder of simulated ``site`` for ``study``, ready to check.

    Parameters
    ----------
    run_sites : Path
        Where the run keeps its simulated sites' folders (used unless the study
        names ``governance.site_folders``).
    site : str
        The simulated site's name.
    study : Study
        The resolved study.
    code_hash : str
        Hash of the code the site runs (the installed package's).

    Raises
    ------
    ConfigError
        If the study names site folders and this site has none.
    """
    if study.governance.site_folders is not None:
        folder = Path(study.governance.site_folders) / site
        if not (folder / LEDGER_FILE).is_file():
            raise ConfigError(
                f"simulated site {site!r} has no site folder at {str(folder)!r} "
                "(governance.site_folders); create it with "
                f"`lhs-fed site init {folder} --name {site}` and approve the study there."
            )
        return _opened(folder, site)
    folder = run_sites / site
    ready = (str(folder), site, study.hash, code_hash, study.governance.preapproved)
    known = _READY.get(ready)
    if known is not None and known[1] == _registry_identity(folder):
        return known[0]  # as prepared for this study, and no approval changed since
    opened = (
        _opened(folder, site) if (folder / LEDGER_FILE).is_file() else SiteFolder.init(folder, site)
    )
    if study.governance.preapproved and not opened.is_approved(study.hash, code_hash):
        opened.approve(
            study.hash,
            code_hash,
            study_name=study.name,
            by=PREAPPROVED_BY,
            reason=PREAPPROVED_REASON,
            preapproved=True,
        )
    if len(_READY) >= _OPENED_MAX:
        _READY.clear()
    _READY[ready] = (opened, _registry_identity(folder))
    return opened


def _registry_identity(folder: Path) -> tuple[int, ...] | None:
    """The approvals registry's inode, size and mtime, and the ledger's inode."""
    try:
        registry = (folder / APPROVALS_FILE).stat()
        ledger = (folder / LEDGER_FILE).stat()
    except FileNotFoundError:
        return None
    return (registry.st_ino, registry.st_size, registry.st_mtime_ns, ledger.st_ino)


def _opened(folder: Path, site: str) -> SiteFolder:
    """The site folder, opened once per process while its ledger file stays the same.

    A simulation asks for every site's folder with every message; opening one
    loads its keys and reads its headers. Approval checks and appends read the
    files each time anyway, so reusing the object grants nothing the files
    do not.
    """
    info = (folder / LEDGER_FILE).stat()
    key = (str(folder.resolve()), site, info.st_dev, info.st_ino)
    cached = _OPENED.get(key)
    if cached is None:
        if len(_OPENED) >= _OPENED_MAX:
            _OPENED.clear()
        cached = _OPENED[key] = SiteFolder.open(folder, site=site)
    return cached


_OPENED_MAX = 10_000
_OPENED: dict[tuple[str, str, int, int], SiteFolder] = {}
_READY: dict[tuple[str, str, str, str, bool], tuple[SiteFolder, tuple[int, ...] | None]] = {}
