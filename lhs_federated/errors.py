"""One exception base for the project, carrying the exit code the CLI uses.

Errors caused by the user's input (a study file, a data table, a site config)
exit with code 2 and are printed as one paragraph without a traceback; anything
else is a bug and exits with code 1. Warning classes are separate so that users
can filter them with :mod:`warnings`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


class LhsError(Exception):
    """Base class of every error lhs-federated raises on purpose.

    Parameters
    ----------
    message : str
        What was expected, what was found and how to fix it.
    exit_code : int, optional
        The process exit code the CLI uses for this error.
    """

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(LhsError):
    """A study, contract or site configuration is invalid."""


class DataError(LhsError):
    """A data table does not meet its contract or cannot be read."""


class StudyRunError(LhsError):
    """A federated run could not complete (too few sites, all sites failed)."""


class TrainingDivergedError(LhsError):
    """Local training diverged (loss NaN, infinite or exploding); the update is not sent."""


class SiteRefusal(LhsError):  # noqa: N818 - a refusal is a decision, not a fault
    """A site declined a message; the reason travels back to the server.

    Parameters
    ----------
    site : str
        The refusing site.
    reason : str
        Why the site refused, in words the coordinator can act on.
    """

    def __init__(self, site: str, reason: str) -> None:
        super().__init__(f"site {site!r} refused: {reason}")
        self.site = site
        self.reason = reason


class LhsWarning(UserWarning):
    """Base class of the warnings lhs-federated emits."""


class TrainingWarning(LhsWarning):
    """Local training was unstable but recovered (a loss spike within the round)."""


class UndefinedMetricWarning(LhsWarning):
    """A metric could not be computed for a site (for example one class only)."""
