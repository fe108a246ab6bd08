"""TLS for the gRPC xDS listener: the PEM material checked at start-up, and the names a client
certificate gives its node. Pure: bytes in, names out (the files are read by settings.py).

With a client CA (mutual TLS), gRPC verifies the client's chain; Aegis then lets a
stream speak only for a node id that the certificate names, as its subject's
common name or one of its DNS or URI subject alternative names (a SPIFFE id, say).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


class TlsConfigError(ValueError):
    """The PEM material cannot serve TLS; the message names the setting, never the key's bytes."""


@dataclass(frozen=True)
class GrpcTls:
    """Server certificate chain and key (PEM), and the CA that client certificates must chain to."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


def check_server_tls(certificate_chain: bytes, private_key: bytes, client_ca: bytes | None) -> GrpcTls:
    """The material as GrpcTls, or TlsConfigError saying which setting is wrong and how."""
    try:
        certificates = x509.load_pem_x509_certificates(certificate_chain)
    except ValueError:
        raise TlsConfigError("AEGIS_XDS_GRPC_TLS_CERT is not a PEM certificate (chain)") from None
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError):
        raise TlsConfigError(
            "AEGIS_XDS_GRPC_TLS_KEY is not an unencrypted PEM private key"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificates[0].public_key().public_bytes(
        encoding, public
    ):
        raise TlsConfigError(
            "AEGIS_XDS_GRPC_TLS_KEY is not the key of AEGIS_XDS_GRPC_TLS_CERT's first certificate"
        )
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise TlsConfigError("AEGIS_XDS_GRPC_TLS_CLIENT_CA is not a PEM certificate (bundle)") from None
    return GrpcTls(certificate_chain, private_key, client_ca)


def certificate_names(pem: bytes) -> frozenset[str]:
    """The node ids a client certificate may speak for: its CN, DNS and URI SANs."""
    certificate = x509.load_pem_x509_certificate(pem)
    names = {
        str(attribute.value) for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    }
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(names)
    names.update(alternatives.get_values_for_type(x509.DNSName))
    names.update(alternatives.get_values_for_type(x509.UniformResourceIdentifier))
    return frozenset(names)
