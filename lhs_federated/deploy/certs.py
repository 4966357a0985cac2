"""Development certificates and site keys, and the checks a deployment runs on them.

``lhs-fed certs init DIR`` makes what a consortium needs to try a deployment:
a development CA, a TLS certificate for the coordinator signed by it (with the
host names and IP addresses sites will use as subject alternative names) and
one EC P-384 key pair per site, in the OpenSSH format Flower's SuperNode
authentication reads. A real consortium replaces the development CA with its
own PKI (see server/README.md); the checks below apply to any certificate:
validity dates, the host name, and the chain to the CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lhs_federated.config import is_host, is_plain_name
from lhs_federated.errors import ConfigError

SITE_KEY_CURVE = ec.SECP384R1()


@dataclass(frozen=True)
class CertificateSet:
    """Paths written by :func:`init_certificates`."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    site_keys: dict[str, Path]


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 from the start (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lhs-federated development CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def init_certificates(
    folder: Path, *, hosts: list[str], sites: list[str], days: int = 365
) -> CertificateSet:
    """Create a development CA, a coordinator certificate and site key pairs.

    Parameters
    ----------
    folder : Path
        Output folder; must not already hold a CA (never overwritten).
    hosts : list of str
        Host names and IP addresses sites use to reach the coordinator.
    sites : list of str
        Site names; each gets ``sites/<name>`` (private) and ``.pub``.
    days : int
        Validity of the certificates.

    Raises
    ------
    ConfigError
        If the folder already holds a CA, or no host is given.
    """
    if (folder / "ca.crt").exists():
        raise ConfigError(f"{folder} already holds a CA (ca.crt); refusing to overwrite it.")
    if not hosts:
        raise ConfigError("at least one host name or IP address is needed for the certificate")
    for host in hosts:
        if not is_host(host):
            raise ConfigError(
                f"--host {host!r} is neither an IP address nor a DNS name (letters, digits and "
                "'-' in dot-separated labels, e.g. coordinator.example.org)."
            )
    for site in sites:
        if not is_plain_name(site):
            raise ConfigError(
                f"--site {site!r} must be 1-64 letters, digits, '-', '_' or '.' (it names a "
                "file and the site)."
            )
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("lhs-federated development CA"))
        .issuer_name(_name("lhs-federated development CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_certificate.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / "ca.key", _pem_key(ca_key))
    (folder / "ca.crt").write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(folder / "server.key", _pem_key(server_key))
    (folder / "server.crt").write_bytes(server_certificate.public_bytes(serialization.Encoding.PEM))
    site_keys = {name: write_site_key(folder / "sites" / name) for name in sites}
    return CertificateSet(
        folder / "ca.crt",
        folder / "ca.key",
        folder / "server.crt",
        folder / "server.key",
        site_keys,
    )


def write_site_key(path: Path) -> Path:
    """Write an EC P-384 key pair: ``path`` (OpenSSH private, 0600) and ``path.pub``."""
    key = ec.generate_private_key(SITE_KEY_CURVE)
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.with_name(path.name + ".pub").write_bytes(public + f" {path.name}\n".encode())
    return path


def check_certificate(
    path: Path, *, ca_path: Path | None = None, host: str | None = None, what: str
) -> x509.Certificate:
    """Check a certificate's dates, and optionally its issuer and host name.

    Raises
    ------
    ConfigError
        If the file is not a PEM certificate, is expired or not yet valid, was
        not issued by the CA, or does not name ``host``.
    """
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{what} {str(path)!r} is not a readable PEM certificate ({exc})."
        ) from exc
    now = dt.datetime.now(dt.UTC)
    if now > certificate.not_valid_after_utc:
        raise ConfigError(
            f"{what} {str(path)!r} expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; issue a new one "
            "(lhs-fed certs init makes development certificates)."
        )
    if now < certificate.not_valid_before_utc:
        raise ConfigError(
            f"{what} {str(path)!r} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the clocks."
        )
    if ca_path is not None:
        ca = check_certificate(ca_path, what="CA certificate")
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ConfigError(
                f"{what} {str(path)!r} was not issued by the CA in {str(ca_path)!r}; "
                "the certificate and the CA do not match."
            ) from exc
    if host is not None and host not in certificate_hosts(certificate):
        raise ConfigError(
            f"{what} {str(path)!r} is for {', '.join(certificate_hosts(certificate))}, "
            f"not {host!r}; sites connecting to {host!r} would refuse it."
        )
    return certificate


def certificate_hosts(certificate: x509.Certificate) -> list[str]:
    """The host names and IP addresses a certificate is valid for."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in names.get_values_for_type(x509.IPAddress)] + list(
        names.get_values_for_type(x509.DNSName)
    )


def check_site_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Check a site's SuperNode key is an OpenSSH EC private key; return its public key.

    Raises
    ------
    ConfigError
        If the file is not an OpenSSH EC private key (Flower would exit 305),
        is protected by a passphrase, or can be read by other users.
    """
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except TypeError as exc:  # "Password was not given but private key is encrypted"
        raise ConfigError(
            f"site key {str(path)!r} is protected by a passphrase; Flower's SuperNode reads "
            "its key without one. Remove it with `ssh-keygen -p -N '' -f KEY` (keep the file "
            "mode 0600) or make a new key with `lhs-fed certs init`."
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"site key {str(path)!r} is not an OpenSSH private key ({exc}); "
            "make one with `lhs-fed certs init` or `ssh-keygen -t ecdsa -b 384`."
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"site key {str(path)!r} is a {type(key).__name__}; SuperNode authentication needs "
            "an EC key (ssh-keygen -t ecdsa -b 384)."
        )
    check_private_mode(path, what="site key")
    return key.public_key()


def check_private_mode(path: Path, *, what: str) -> None:
    """Refuse a private key that other users can read (as OpenSSH does).

    Raises
    ------
    ConfigError
        If the file's mode gives the group or others any access, with the fix.
    """
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read ({exc.strerror}).") from exc
    if mode & 0o077:
        raise ConfigError(
            f"{what} {str(path)!r} has mode {mode:04o}: other users can read it. "
            f"Make it private with `chmod 600 {path}`."
        )
