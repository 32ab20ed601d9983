"""TLS between the orchestrator and workers on other machines: one certificate per runtime.

When workers run where loopback cannot reach (Ray nodes), the orchestrator makes a fresh
self-signed certificate and key (:meth:`TlsIdentity.generate`) and hands both to each worker at
its creation (in its environment, never on disk world-readable). Both sides present that
certificate and trust nothing else (``root_certificates`` is the certificate itself, client
certificates are required), so only processes of this runtime can connect either way; the
runtime token is still checked on every call. A plaintext connection to such a port fails the
TLS handshake. Local workers keep loopback TCP or unix sockets.

    >>> identity = TlsIdentity.generate()
    >>> server.add_secure_port("10.0.0.5:0", identity.server_credentials())
    >>> grpc.aio.secure_channel(address, identity.channel_credentials(),
    ...                         options=[*options, *identity.channel_options()])
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from snakepit_nb._errors import ConfigurationError

__all__ = ["CERT_ENV", "KEY_ENV", "SERVER_NAME", "TlsIdentity"]

#: The name in the certificate; every client checks the server against it.
SERVER_NAME = "snakepit-nb.runtime"
#: Environment variables through which a worker receives the certificate and key (PEM).
CERT_ENV = "SNAKEPIT_NB_TLS_CERT"
KEY_ENV = "SNAKEPIT_NB_TLS_KEY"
_VALID_DAYS = 30


@dataclass(frozen=True, repr=False)
class TlsIdentity:
    """The runtime's certificate and private key (PEM), pinned by both ends."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never the key
        return f"<TlsIdentity {SERVER_NAME} ({len(self.cert_pem)}-byte certificate)>"

    @classmethod
    def generate(cls) -> TlsIdentity:
        """A fresh self-signed ECDSA P-256 certificate for :data:`SERVER_NAME`."""
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
        except ImportError as exc:
            raise ConfigurationError(
                "TLS between the orchestrator and remote workers needs the 'cryptography' "
                "package; install it with: pip install 'snakepit_nb[ray]'"
            ) from exc
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with this certificate; accept only clients presenting it too."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.cert_pem,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Dial with this certificate; trust only a server presenting it."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.cert_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )

    @staticmethod
    def channel_options() -> list[tuple[str, Any]]:
        """Check the server against the certificate's name, whatever address was dialled."""
        return [("grpc.ssl_target_name_override", SERVER_NAME)]

    def env(self) -> dict[str, str]:
        """The environment entries that hand this identity to a worker."""
        return {CERT_ENV: self.cert_pem.decode("ascii"), KEY_ENV: self.key_pem.decode("ascii")}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsIdentity | None:
        """The identity a launcher put in ``env``; None when there is none (plain loopback)."""
        cert, key = env.get(CERT_ENV), env.get(KEY_ENV)
        if not cert and not key:
            return None
        if not cert or not key:
            raise ConfigurationError(
                f"{CERT_ENV} and {KEY_ENV} must be set together (the launcher sets both)"
            )
        return cls(cert_pem=cert.encode("ascii"), key_pem=key.encode("ascii"))
