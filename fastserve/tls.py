"""TLS settings: TF Serving's SSLConfig (--ssl_config_file) and what each transport builds from it.

The file is TF Serving's text proto:

    server_key: "-----BEGIN PRIVATE KEY-----\n..."
    server_cert: "-----BEGIN CERTIFICATE-----\n..."
    custom_ca: "-----BEGIN CERTIFICATE-----\n..."   # CA that signs client certificates
    client_verify: true                              # mutual TLS: clients must present one
"""
import os
import ssl
import tempfile
from dataclasses import dataclass

from fastserve import text_proto


class SSLConfigError(ValueError):
    """The SSL config is unreadable or incomplete; the message says what is wrong."""


@dataclass(frozen=True, repr=False)
class SSLConfig:
    """PEM contents (not paths), as in TF Serving's SSLConfig message."""

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False

    def __repr__(self) -> str:  # never print the key
        return f"SSLConfig(client_verify={self.client_verify}, custom_ca={'set' if self.custom_ca else 'unset'})"


def load_ssl_config_file(path: str) -> SSLConfig:
    return parse_ssl_config(text_proto.read(path, "SSL config file", SSLConfigError), path)


def parse_ssl_config(text: str, where: str = "SSL config") -> SSLConfig:
    proto = text_proto.parse(text, _ssl_config_class()(), where, SSLConfigError)
    if not proto.server_key or not proto.server_cert:
        raise SSLConfigError(f"{where}: server_key and server_cert are required")
    if proto.client_verify and not proto.custom_ca:
        raise SSLConfigError(f"{where}: client_verify needs custom_ca, the CA that signs client certificates")
    config = SSLConfig(proto.server_key, proto.server_cert, proto.custom_ca, proto.client_verify)
    server_context(config)  # a bad key or certificate fails here, at start-up, with its reason
    return config


def server_context(config: SSLConfig) -> ssl.SSLContext:
    """The REST frontend's TLS context."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # ssl loads a certificate chain only from files: write them to a private temporary directory.
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, pem in ((cert, config.server_cert), (key, config.server_key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as out:
                out.write(pem)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise SSLConfigError(f"server_key / server_cert cannot be used: {exc}") from None
    if config.custom_ca:
        try:
            context.load_verify_locations(cadata=config.custom_ca)
        except ssl.SSLError as exc:
            raise SSLConfigError(f"custom_ca cannot be used: {exc}") from None
    if config.client_verify:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(config: SSLConfig):
    """The gRPC server's credentials: TLS, and mutual TLS with client_verify."""
    import grpc

    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() if config.custom_ca else None,
        require_client_auth=config.client_verify,
    )


def _ssl_config_class():
    """tensorflow.serving.SSLConfig (ssl_config.proto)."""
    return text_proto.message_classes("fastserve/ssl_config.proto", "tensorflow.serving", {"SSLConfig": [
        (1, "server_key", "string"), (2, "server_cert", "string"), (3, "custom_ca", "string"), (4, "client_verify", "bool"),
    ]})["SSLConfig"]
