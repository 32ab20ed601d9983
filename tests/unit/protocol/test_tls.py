"""The runtime's TLS identity: generated, handed over in the environment, never shown."""

from __future__ import annotations

import pytest
from cryptography import x509

from snakepit_nb._errors import ConfigurationError
from snakepit_nb.protocol.tls import CERT_ENV, KEY_ENV, SERVER_NAME, TlsIdentity


def test_a_fresh_certificate_names_the_runtime_and_is_its_own_root() -> None:
    identity = TlsIdentity.generate()
    cert = x509.load_pem_x509_certificate(identity.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [SERVER_NAME]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert TlsIdentity.generate().cert_pem != identity.cert_pem  # one per runtime


def test_the_environment_round_trip_and_the_repr_hides_the_key() -> None:
    identity = TlsIdentity.generate()
    env = identity.env()
    assert set(env) == {CERT_ENV, KEY_ENV}
    assert TlsIdentity.from_env(env) == identity
    assert TlsIdentity.from_env({}) is None
    assert "PRIVATE" not in repr(identity)


def test_half_an_identity_is_refused() -> None:
    env = TlsIdentity.generate().env()
    del env[KEY_ENV]
    with pytest.raises(ConfigurationError, match="must be set together"):
        TlsIdentity.from_env(env)
