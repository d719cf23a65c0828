"""The secured local stack (``stack up --secure``; the design is docs/security.md).

Everything is generated into the run dir on the first ``up`` and reused after:

- ``tls/``: a CA (``ca.pem``, its key ``ca.key``) and per DC a certificate for
  ``127.0.0.1`` and ``localhost`` (``<dc>.crt``, ``<dc>.key``), also as a PKCS#12 keystore for
  the broker (``<dc>.p12``). Made with the ``cryptography`` library, no ``openssl`` needed.
- ``secrets/``: one file per password (``<user>.password``), an environment file per Kafka
  user (``<user>.env``: ``COOPR_KAFKA_USERNAME`` and ``COOPR_KAFKA_PASSWORD_FILE``, never the
  value itself), and libpq's ``pgpass`` with each DC's database password.

Every private key and secret file is ``0600``. Secrets reach the processes by file only:
the brokers' ``server.properties`` (``0600``), MirrorMaker through Kafka's
``FileConfigProvider``, the workers through ``COOPR_KAFKA_PASSWORD_FILE``, libpq through the
``passfile`` of the DSN, and the SCRAM users given to the storage format through a Java
argument file deleted right after.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from pipeline.acls import Principal, Role, cluster_principals, principal_name
from pipeline.errors import StackError
from pipeline.kafka_config import KafkaSettings, settings_for
from pipeline.topology import DataCenter, Topology

__all__ = [
    "ADMIN_USER",
    "BROKER_USER",
    "StackSecurity",
    "acl_bindings",
    "broker_cn",
    "client_settings",
    "create_acls",
    "secure_topology_toml",
    "write_private",
]

#: The brokers' own SCRAM user (inter-broker listener) and the stack's administrator, which
#: creates topics and ACLs and which the tests use; both super users.
BROKER_USER = "coopr-broker"
ADMIN_USER = "coopr-admin"
#: Certificates of a local stack last a year: long enough for any run, short enough that
#: a forgotten run dir does not hold a live key for ever.
_VALID_DAYS = 365
#: The workers that log in to Kafka as a user of their own (the stand-in server does not).
_WORKER_ROLES: tuple[Role, ...] = ("relay", "applier", "controller")


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True, slots=True)
class StackSecurity:
    """The TLS material and secrets of the secured stack in ``run_dir``."""

    run_dir: Path

    @classmethod
    def of(cls, run_dir: Path) -> StackSecurity | None:
        """The stack's security when ``run_dir`` holds a secured stack, else None."""
        found = cls(run_dir)
        return found if found.ca_file.exists() else None

    @classmethod
    def of_topology(cls, topology: Topology) -> StackSecurity | None:
        """The security of the secured stack running ``topology`` (its file is written in
        the stack's run dir), else None."""
        if all(dc.kafka_security != "SASL_SSL" for dc in topology.dcs):
            return None
        return cls.of(Path(topology.source).parent)

    @property
    def tls_dir(self) -> Path:
        return self.run_dir / "tls"

    @property
    def secrets_dir(self) -> Path:
        return self.run_dir / "secrets"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def pgpass(self) -> Path:
        return self.secrets_dir / "pgpass"

    def cert(self, dc: str) -> Path:
        return self.tls_dir / f"{dc}.crt"

    def key(self, dc: str) -> Path:
        return self.tls_dir / f"{dc}.key"

    def keystore(self, dc: str) -> Path:
        return self.tls_dir / f"{dc}.p12"

    def password_file(self, name: str) -> Path:
        return self.secrets_dir / f"{name}.password"

    def properties_file(self, user: str) -> Path:
        """``password=<it>``: how Kafka's ``FileConfigProvider`` gives MirrorMaker 2 a password."""
        return self.secrets_dir / f"{user}.properties"

    def password(self, name: str) -> str:
        """The secret ``name`` (a Kafka user, ``keystore`` or ``postgres-<dc>``)."""
        try:
            return self.password_file(name).read_text()
        except OSError as e:
            raise StackError(f"secret {name} of the stack is missing: {e.strerror}") from None

    def environ(self, user: str) -> dict[str, str]:
        """What a process running as Kafka ``user`` needs in its environment: its name and
        the file of its password (docs/security.md), never the password."""
        return {
            "COOPR_KAFKA_USERNAME": user,
            "COOPR_KAFKA_PASSWORD_FILE": str(self.password_file(user)),
        }

    def worker_environ(self, kind: str, dc: str) -> dict[str, str] | None:
        """The environment of ``dc``'s worker ``kind`` (``relay``, ``applier``,
        ``controller``); None for one without a Kafka user (the stand-in server)."""
        for role in _WORKER_ROLES:
            if role == kind:
                return self.environ(principal_name(role, dc))
        return None

    def users(self, topology: Topology) -> list[str]:
        """Every SCRAM user of any DC's cluster (each has one password everywhere)."""
        return sorted({u for dc in topology.dcs for u in self.cluster_users(topology, dc.name)})

    def cluster_users(self, topology: Topology, dc: str) -> list[str]:
        """The SCRAM users of ``dc``'s cluster."""
        return [BROKER_USER, ADMIN_USER, *(p.user for p in cluster_principals(topology, dc))]

    def ensure(self, topology: Topology) -> None:
        """Make whatever of the CA, the DCs' certificates and the secrets is missing."""
        ca_key = self._ca()
        for name in [*self.users(topology), "keystore"]:
            self._secret(name)
        for dc in topology.dcs:
            self._dc_certificate(dc.name, ca_key)
            if not dc.witness:
                self._secret(f"postgres-{dc.name}")
        lines = [
            f"127.0.0.1:{dc.database_port}:*:postgres:{self.password(f'postgres-{dc.name}')}"
            for dc in topology.data_dcs
        ]
        write_private(self.pgpass, ("\n".join(lines) + "\n").encode())
        for user in self.users(topology):
            env = "".join(f"{k}={v}\n" for k, v in self.environ(user).items())
            write_private(self.secrets_dir / f"{user}.env", env.encode())
            write_private(self.properties_file(user), f"password={self.password(user)}\n".encode())

    def _secret(self, name: str) -> None:
        if not self.password_file(name).exists():
            # URL-safe characters only: they need no quoting in JAAS, properties or pgpass.
            write_private(self.password_file(name), secrets.token_urlsafe(24).encode())

    def _ca(self) -> ec.EllipticCurvePrivateKey:
        key_file = self.tls_dir / "ca.key"
        if self.ca_file.exists() and key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coopr-pipeline local CA")])
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        write_private(key_file, _pem_key(key))
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key

    def _dc_certificate(self, dc: str, ca_key: ec.EllipticCurvePrivateKey) -> None:
        if self.keystore(dc).exists():
            return
        ca = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, broker_cn(dc))])
        cert = (
            _builder(subject, ca.subject, key.public_key())
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        self.cert(dc).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private(self.key(dc), _pem_key(key))
        store = pkcs12.serialize_key_and_certificates(
            dc.encode(),
            key,
            cert,
            [ca],
            serialization.BestAvailableEncryption(self.password("keystore").encode()),
        )
        write_private(self.keystore(dc), store)


def broker_cn(dc: str) -> str:
    """The common name of ``dc``'s broker certificate; ``User:CN=<it>`` is the broker's
    principal on its TLS controller listener."""
    return f"coopr-kafka-{dc}"


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def client_settings(
    security: StackSecurity | None, dc: DataCenter, client_id: str, *, log_level: int = 3
) -> KafkaSettings:
    """Settings for a client of the stack itself (the stack, benchmarks, tests) in ``dc``'s
    Kafka: as the stack's administrator on a secured stack."""
    environ = None if security is None else security.environ(ADMIN_USER)
    return settings_for(dc, client_id, environ=environ, log_level=log_level)


def secure_topology_toml(topology: Topology, security: StackSecurity) -> str:
    """``topology`` as the secured stack runs it: every DC's Kafka over SASL_SSL with the
    stack's CA, every database over TLS (``verify-full``) with the password in ``pgpass``."""
    ca = security.ca_file
    lines = [
        f"# The secured stack's topology, written by `coopr-pipeline stack up --secure` from "
        f"{topology.source}.",
        f"shard_count = {topology.shard_count}",
        f"replicas = {topology.replicas}",
    ]
    for dc in topology.dcs:
        lines += [
            "",
            "[[dc]]",
            f'name = "{dc.name}"',
            f'kafka = "{dc.kafka}"',
            'kafka_security = "SASL_SSL"',
            f'kafka_ca = "{ca}"',
        ]
        if dc.witness:
            lines.append("witness = true")
        else:
            separator = "&" if "?" in dc.database else "?"
            params = f"sslmode=verify-full&sslrootcert={ca}&passfile={security.pgpass}"
            lines.append(f'database = "{dc.database}{separator}{params}"')
    return "\n".join(lines) + "\n"


_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefix": ResourcePatternType.PREFIXED}


def _operation(name: str) -> AclOperation:
    """``DescribeConfigs`` -> ``AclOperation.DESCRIBE_CONFIGS``."""
    return AclOperation[re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()]


def acl_bindings(principal: Principal) -> list[AclBinding]:
    """``principal``'s grants as the Admin API takes them (allow, from any host)."""
    return [
        AclBinding(
            ResourceType[grant.resource.upper()],
            grant.name,
            ResourcePatternType.PREFIXED
            if grant.pattern == "prefix"
            else ResourcePatternType.LITERAL,
            f"User:{principal.user}",
            "*",
            _operation(operation),
            AclPermissionType.ALLOW,
        )
        for grant in principal.grants
        for operation in grant.operations
    ]


def create_acls(settings: KafkaSettings, topology: Topology, dc: DataCenter) -> int:
    """Create every ACL of ``dc``'s cluster (creating one that exists changes nothing);
    returns how many bindings it holds."""
    bindings = [b for p in cluster_principals(topology, dc.name) for b in acl_bindings(p)]
    admin = AdminClient(settings.admin())
    try:
        for future in admin.create_acls(bindings, request_timeout=30).values():
            future.result()
    except KafkaException as e:
        raise StackError(f"cannot create the ACLs of {dc.name}: {e.args[0].str()}") from None
    return len(bindings)
