"""TLS for the broker's connections: client contexts, broker listeners, development certificates.

Three things, all driven by the settings:

- ``client_context``: the one ``ssl.SSLContext`` every MQTT client of the
  system uses (bridge, legacy shim, simulator) when ``AOC_MQTT_TLS`` is on. It
  verifies the broker's certificate against ``AOC_MQTT_CA_FILE`` (the system's
  CAs when unset) and checks the host name. Clients connect to
  ``AOC_MQTT_PORT`` as configured: with TLS on, operators set it to the TLS
  port (8883).
- ``broker_listeners``: the MQTT-over-TLS and WebSocket-over-TLS listeners of
  the Mosquitto that `aoc up` runs, when a certificate and key are configured.
- ``init`` (`aoc tls init`): a local certificate authority and a server
  certificate for development. Its names include ``localhost``, ``127.0.0.1``
  and ``::1`` (the legacy certificate failed for local connections), and the
  configured host names.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import socket
import ssl
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aoc.config import Settings
from broker import conf as broker_conf

# Names every development certificate carries: what local clients connect to.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
# 825 days: the longest validity Apple's TLS clients accept for a server certificate.
SERVER_DAYS = 825

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every MQTT client, or ``None`` when ``AOC_MQTT_TLS`` is off.

    Certificate and host name verification are on (``create_default_context``);
    with ``AOC_MQTT_CA_FILE`` set, only that CA is trusted. A CA file that
    cannot be read raises ``ValueError`` naming the variable (``problems`` finds
    it earlier, at start-up).
    """
    if not settings.mqtt_tls:
        return None
    cafile = settings.mqtt_ca_file
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"AOC_MQTT_CA_FILE: cannot load {cafile}: {exc}") from None


def problems(settings: Settings) -> list[str]:
    """What is wrong with the TLS settings in any mode, one line per problem."""
    found: list[str] = []
    if settings.mqtt_tls and settings.mqtt_ca_file is not None:
        try:
            client_context(settings)
        except ValueError as exc:
            found.append(str(exc))
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        missing = "AOC_TLS_KEY_FILE" if key is None else "AOC_TLS_CERT_FILE"
        found.append(f"{missing} is empty: the broker's TLS listeners need a certificate and key")
    for variable, path in (("AOC_TLS_CERT_FILE", cert), ("AOC_TLS_KEY_FILE", key)):
        if path is not None and not path.is_file():
            found.append(f"{variable}='{path}' is not a file: run `aoc tls init`, or fix the path")
    return found


def broker_listeners(settings: Settings) -> str:
    """Mosquitto's TLS listeners for ``broker.conf.render(extra=...)``; empty without a cert.

    The broker runs as the current user (``render`` says so), who must be able
    to read both files: a ``ValueError`` names the variable otherwise, instead of
    a broker that exits at every restart.
    """
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        return ""
    plain = {settings.mqtt_port, settings.mqtt_ws_port}
    if plain & {settings.mqtt_tls_port, settings.mqtt_wss_port}:
        raise ValueError(
            "AOC_MQTT_TLS_PORT and AOC_MQTT_WSS_PORT must differ from AOC_MQTT_PORT and "
            "AOC_MQTT_WS_PORT: the broker listens on all four"
        )
    for name, path in (("AOC_TLS_CERT_FILE", cert), ("AOC_TLS_KEY_FILE", key)):
        if not os.access(path, os.R_OK):
            raise ValueError(f"{name}: {path} is not readable by the broker's user")
    return broker_conf.tls_listeners(
        tls_port=settings.mqtt_tls_port,
        wss_port=settings.mqtt_wss_port,
        bind_host=settings.resolved_mqtt_bind_host,
        certfile=cert.resolve(),
        keyfile=key.resolve(),
        max_connections=settings.mqtt_max_connections,
    )


# --- `aoc tls init` -------------------------------------------------------------


@dataclass
class Issued:
    """What `aoc tls init` wrote: the CA's and the server's files, and the server's names."""

    ca_cert: str
    ca_key: str
    cert: str
    key: str
    names: list[str]
    new_ca: bool
    not_after: str
    env: dict[str, str] = field(default_factory=dict)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AOC development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """Each name as an IP address entry if it is one, else as a DNS entry."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def server_names(settings: Settings, extra: Iterable[str] = ()) -> list[str]:
    """The names a server certificate carries: local ones, AOC_TLS_HOSTNAMES, ``extra``."""
    configured = (name.strip() for name in settings.tls_hostnames.split(","))
    names: list[str] = []
    for name in (*LOCAL_NAMES, *configured, *(n.strip() for n in extra)):
        if name and name not in names:
            names.append(name)
    return names


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only (0600), whatever mode an older file had."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"AOC development CA ({socket.gethostname()})")
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks drift
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        # pathlen 0: it signs server certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / CA_KEY} is not the key `aoc tls init` made")
    return cert, key


def _server_cert(
    names: list[str],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
    now: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A certificate outliving its issuer would fail verification before its own end.
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_alt_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def init(
    directory: Path,
    names: list[str],
    *,
    days: int = SERVER_DAYS,
    force: bool = False,
) -> Issued:
    """Make (or keep) the development CA in ``directory`` and issue a server certificate.

    An existing CA is kept unless ``force``: clients that already trust it keep
    working with the new server certificate. Raises ``FileExistsError`` when
    only half of a CA (certificate or key) is there.
    """
    if days < 1:
        raise ValueError(f"--days must be at least 1, not {days}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    present = [(directory / name).exists() for name in (CA_CERT, CA_KEY)]
    new_ca = force or not any(present)
    if new_ca:
        ca_cert, ca_key = _new_ca(now)
        _write_private(directory / CA_KEY, _key_pem(ca_key))
        (directory / CA_CERT).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    elif not all(present):
        raise FileExistsError(
            f"{directory} holds only half a CA ({CA_CERT} and {CA_KEY} go together): "
            "restore the other file or pass --force to make a new CA"
        )
    else:
        ca_cert, ca_key = _load_ca(directory)
    cert, key = _server_cert(names, ca_cert, ca_key, days, now)
    _write_private(directory / SERVER_KEY, _key_pem(key))
    (directory / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    where = directory.resolve()
    return Issued(
        ca_cert=str(where / CA_CERT),
        ca_key=str(where / CA_KEY),
        cert=str(where / SERVER_CERT),
        key=str(where / SERVER_KEY),
        names=names,
        new_ca=new_ca,
        not_after=cert.not_valid_after_utc.isoformat(),
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `aoc tls init` on the ``aoc`` command's subcommands."""
    tls = commands.add_parser("tls", help="TLS certificates for development")
    tls.set_defaults(tls_parser=tls)
    # Not required by argparse, so that `aoc tls` parses (and answers with its usage).
    actions = tls.add_subparsers(dest="tls_command")
    init_cmd = actions.add_parser(
        "init", help="a local CA and a server certificate for localhost and AOC_TLS_HOSTNAMES"
    )
    init_cmd.add_argument("--dir", type=Path, default=None, help="default: AOC_DATA_DIR/tls")
    init_cmd.add_argument(
        "--hostname", action="extend", nargs="+", default=[], metavar="NAME",
        help="more names of the server: host names or IP addresses",
    )
    init_cmd.add_argument("--days", type=int, default=SERVER_DAYS, help="server cert validity")
    init_cmd.add_argument("--force", action="store_true", help="replace an existing CA")
    init_cmd.add_argument("--json", action="store_true", help="machine-readable output")


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Run `aoc tls init`; the exit code (2: the arguments or files do not allow it)."""
    if args.tls_command is None:
        args.tls_parser.print_usage(sys.stderr)
        print("aoc tls: name a subcommand (init)", file=sys.stderr)
        return 2
    directory = args.dir or settings.data_dir / "tls"
    try:
        issued = init(
            directory, server_names(settings, args.hostname), days=args.days, force=args.force
        )
    except (ValueError, FileExistsError) as exc:
        print(f"aoc tls init: {exc}", file=sys.stderr)
        return 2
    issued.env = {
        "AOC_TLS_CERT_FILE": issued.cert,
        "AOC_TLS_KEY_FILE": issued.key,
        "AOC_MQTT_CA_FILE": issued.ca_cert,
    }
    if args.json:
        print(json.dumps(asdict(issued), indent=2))
        return 0
    state = "created" if issued.new_ca else "kept (pass --force to replace it)"
    print(f"CA {state}: {issued.ca_cert} (key {issued.ca_key}, mode 0600)")
    print(f"server certificate: {issued.cert} (key {issued.key}, mode 0600)")
    print(f"  names: {', '.join(issued.names)}; valid until {issued.not_after}")
    print("Add to .env (the broker's TLS listeners, and the CA clients trust):")
    for name, value in issued.env.items():
        print(f"{name}={value}")
    # Not for `aoc up` itself: its broker's plain listener is AOC_MQTT_PORT.
    print("For aoc bridge, api or simulate against a TLS broker (not under `aoc up`), also:")
    print(f"AOC_MQTT_TLS=true\nAOC_MQTT_PORT={settings.mqtt_tls_port}")
    return 0
