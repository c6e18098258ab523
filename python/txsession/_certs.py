"""
Certificates made for the tests and for the benchmark's TLS row (with C{cryptography}, which
the C{tls} extra installs): a CA, certificates it signs for a server or a client, written as
PEM files for C{redis-server} and loaded for Twisted.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class CA:
    """
    A certificate authority of its own, named C{name}, whose files go in C{directory}.
    """

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # Browsers (NSS) find the issuer of a certificate by these key identifiers.
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self.path = self._write(f"{name}-ca.pem", self.pem)

    def _write(self, filename: str, data: bytes) -> str:
        path = os.path.join(self.directory, filename)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(self, common: str, names: tuple[str, ...] = (), client: bool = False) -> Issued:
        """
        A certificate for C{common}, naming C{names} (host names or IP addresses) as its
        subject alternative names, for a server or (C{client}) a client.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            critical=False,
        )
        if alternatives:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), False)
        certificate = builder.sign(self.key, hashes.SHA256())
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        keyPem = _pem(key)
        return Issued(
            pem,
            keyPem,
            self._write(f"{self.name}-{common}.pem", pem),
            self._write(f"{self.name}-{common}.key", keyPem),
        )

    def trustRoot(self):
        """
        This CA as a Twisted trust root.
        """
        from twisted.internet import ssl

        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(self.pem)])


class Issued:
    def __init__(self, pem: bytes, keyPem: bytes, path: str, keyPath: str) -> None:
        self.pem = pem
        self.keyPem = keyPem
        self.path = path
        self.keyPath = keyPath

    def privateCertificate(self):
        """
        The certificate with its key, as Twisted's C{clientCertificate}.
        """
        from twisted.internet import ssl

        return ssl.PrivateCertificate.loadPEM(self.keyPem + self.pem)
