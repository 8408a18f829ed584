"""``voicebridge dev-cert``: a certificate and key for trying SIP over TLS locally.

It makes a throw-away certificate authority and one server certificate it signs for the
given host names and addresses (``localhost``, ``127.0.0.1`` and ``::1`` by default),
writes ``ca.pem`` (the authority's certificate: what peers trust), ``cert.pem`` (the
server certificate) and ``key.pem`` (its private key, mode 0600), and prints the
``[sip]`` settings that use them. The authority's own key is never written, so it signs
nothing else. These files are for development and tests: a real deployment uses a
certificate from a CA its peers already trust.

:func:`make_ca` and :func:`issue` are the building blocks (tests use them for client
certificates and for certificates that must not verify).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
#: How long the certificates are valid (days).
VALID_DAYS = 825


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, in memory."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "voicebridge dev-cert"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (builder.not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .serial_number(x509.random_serial_number()))


def make_ca(common_name: str = "voicebridge development CA") -> Issued:
    """A self-signed certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    builder = _validity(x509.CertificateBuilder().subject_name(name).issuer_name(name)
                        .public_key(key.public_key()))
    builder = (builder
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    return Issued(builder.sign(key, hashes.SHA256()), key)


def _alt_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(ca: Issued, hosts: tuple[str, ...], *, client: bool = False) -> Issued:
    """A certificate signed by ``ca`` for ``hosts`` (names and addresses): for a SIP
    server, which is a TLS client too when it opens connections (both usages), or with
    ``client`` for a TLS client only."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if not client:
        usage.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = _validity(x509.CertificateBuilder().subject_name(_name(hosts[0]))
                        .issuer_name(ca.cert.subject).public_key(key.public_key()))
    builder = (builder
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=False,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
               .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)            # an existing file keeps its mode through O_CREAT


def write_dev_cert(folder: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS
                   ) -> tuple[Path, Path, Path]:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    server = issue(ca, hosts)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_path.write_bytes(ca.cert_pem())
    cert_path.write_bytes(server.cert_pem())
    write_private(key_path, server.key_pem())
    return ca_path, cert_path, key_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="dev-cert", type=Path,
                        help="folder to write ca.pem, cert.pem and key.pem into "
                             "(default: ./dev-cert)")
    parser.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                        help="a host name or IP address the certificate is for (repeat; "
                             "default: localhost, 127.0.0.1 and ::1)")


def run(args: argparse.Namespace) -> int:
    hosts = tuple(args.hosts) if args.hosts else DEFAULT_HOSTS
    ca, cert, key = (p.resolve() for p in write_dev_cert(args.out, hosts))
    print(f"wrote a development certificate for {', '.join(hosts)}:\n"
          f"  {cert}  (certificate)\n  {key}  (private key, mode 0600)\n"
          f"  {ca}  (the CA to trust on the peers)\n"
          "use it with these settings in voicebridge.toml (not for production):\n\n"
          "[sip]\n"
          'transports = ["udp", "tcp", "tls"]\n'
          "tls_port = 5061\n"
          f'tls_cert = "{cert}"\n'
          f'tls_key = "{key}"\n'
          f'tls_ca = "{ca}"\n\n'
          "or in the environment:\n"
          "  VOICEBRIDGE_SIP_TRANSPORTS=udp,tcp,tls\n"
          f"  VOICEBRIDGE_SIP_TLS_CERT={cert}\n"
          f"  VOICEBRIDGE_SIP_TLS_KEY={key}\n"
          f"  VOICEBRIDGE_SIP_TLS_CA={ca}")
    return 0


__all__ = ["DEFAULT_HOSTS", "Issued", "add_arguments", "issue", "make_ca", "run",
           "write_dev_cert", "write_private"]
