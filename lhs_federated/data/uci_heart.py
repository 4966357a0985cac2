"""The UCI Heart Disease study: four hospitals, read from the published files.

The files are not shipped (CC BY 4.0, but large enough and citable enough to
fetch from their source): :func:`download_uci_heart` fetches them from the UCI
address and checks each file's MD5 before keeping it, and
:func:`load_uci_heart` reads them from a folder the user names, checking the
same digests so that a benchmark always runs on the published data.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

from lhs_federated.errors import DataError

UCI_BASE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/"

COLUMNS = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
]

# centre -> (file name, MD5 of the published file)
CENTRES: dict[str, tuple[str, str]] = {
    "cleveland": ("processed.cleveland.data", "2d91a8ff69cfd9616aa47b59d6f843db"),
    "hungary": ("processed.hungarian.data", "22e96bee155b5973568101c93b3705f6"),
    "switzerland": ("processed.switzerland.data", "9a87f7577310b3917730d06ba9349e20"),
    "va": ("processed.va.data", "4249d03ca7711e84f4444768c9426170"),
}


def load_uci_heart(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Read the four centres' processed files from ``folder``.

    Returns
    -------
    dict of str to DataFrame
        One raw table per centre (``cleveland``, ``hungary``, ``switzerland``,
        ``va``) with the 14 named columns; ``?`` is read as missing.

    Raises
    ------
    DataError
        If a file is missing or its MD5 differs from the published file's.
    """
    folder = Path(folder)
    missing = [name for name, _ in CENTRES.values() if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"UCI Heart Disease folder {str(folder)!r} lacks {', '.join(missing)}. "
            f"Fetch them with `lhs-fed data download-uci {folder}`, or name the "
            "folder that holds the four processed.*.data files."
        )
    tables = {}
    for centre, (name, digest) in CENTRES.items():
        path = folder / name
        actual = _md5(path.read_bytes())
        if actual != digest:
            raise DataError(
                f"{path} has MD5 {actual}, not the published {digest}: the file was "
                "changed or is a different release. Download it again with "
                f"`lhs-fed data download-uci {folder}`."
            )
        tables[centre] = pd.read_csv(
            path, header=None, names=COLUMNS, dtype=str, na_values=["?"], keep_default_na=False
        )
    return tables


def download_uci_heart(
    folder: str | Path, *, base_url: str = UCI_BASE_URL, timeout: float = 30.0
) -> list[Path]:
    """Download the four processed files into ``folder``, checking their MD5.

    A file is written only once its digest matches, and atomically, so an
    interrupted or corrupted download never leaves a file that looks valid.

    Parameters
    ----------
    folder : str or Path
        Where to put the files (created if needed).
    base_url : str
        Address of the folder holding the files (the UCI archive by default).
    timeout : float
        Seconds to wait for each response.

    Raises
    ------
    DataError
        If a file cannot be fetched or its MD5 does not match.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, digest in CENTRES.values():
        url = base_url.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise DataError(f"could not download {url}: {exc}") from exc
        actual = _md5(payload)
        if actual != digest:
            raise DataError(
                f"{url} returned a file with MD5 {actual}, not the published {digest}; "
                "nothing was written."
            )
        target = folder / name
        tmp = folder / f".{name}.part"
        tmp.write_bytes(payload)
        tmp.replace(target)
        written.append(target)
    return written


def _md5(payload: bytes) -> str:
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()
