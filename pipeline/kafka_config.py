"""Kafka client settings: one frozen object, turned into librdkafka's dotted dict in one place.

:func:`settings_for` builds it for one DC of the topology: the topology says how that DC's
Kafka is reached (``kafka_security``, ``kafka_ca``), the environment says with what
(docs/security.md): ``COOPR_KAFKA_<DC>_USERNAME`` and ``COOPR_KAFKA_<DC>_PASSWORD`` for that
DC only (commands that talk to every DC), else ``COOPR_KAFKA_USERNAME`` and
``COOPR_KAFKA_PASSWORD``; each password also as ``..._FILE``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.errors import ConfigError
from pipeline.secrets import load_secret
from pipeline.topology import DataCenter

__all__ = ["SASL_MECHANISM", "ClientConfig", "KafkaSettings", "credential_names", "settings_for"]

#: The one SASL mechanism of a SASL_SSL cluster (docs/security.md).
SASL_MECHANISM = "SCRAM-SHA-512"

#: librdkafka settings as confluent_kafka takes them.
ClientConfig = dict[str, str | int | float | bool]


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Connection settings of one Kafka cluster.

    ``request_timeout_ms`` bounds each admin or metadata request (ms). ``log_level`` is
    librdkafka's syslog level for its own stderr lines (3: errors); errors that matter reach
    the caller as exceptions or error callbacks either way. Under ``SASL_SSL`` the client
    logs in as ``sasl_username``; the password never shows in a repr.
    """

    bootstrap_servers: str
    client_id: str = "coopr-pipeline"
    security_protocol: str = "PLAINTEXT"
    request_timeout_ms: int = 10_000
    log_level: int = 3
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None

    def common(self) -> ClientConfig:
        """Settings every client (producer, consumer, admin) shares: the only place the
        password enters a librdkafka config."""
        config: ClientConfig = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
            "log_level": self.log_level,
        }
        if self.security_protocol == "SASL_SSL":
            config["sasl.mechanism"] = SASL_MECHANISM
            config["sasl.username"] = self.sasl_username or ""
            config["sasl.password"] = self.sasl_password or ""
            if self.ssl_ca_location is not None:
                config["ssl.ca.location"] = self.ssl_ca_location
        return config

    def admin(self) -> ClientConfig:
        """An AdminClient's settings."""
        return {**self.common(), "socket.timeout.ms": self.request_timeout_ms}

    def producer(self, **overrides: str | int | float | bool) -> ClientConfig:
        """An idempotent producer (``acks=all``): no loss, no duplicates from retries."""
        return {
            **self.common(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            **overrides,
        }

    def consumer(self, group_id: str, **overrides: str | int | float | bool) -> ClientConfig:
        """A consumer that commits nothing by itself: the caller stores offsets after its work."""
        return {
            **self.common(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            **overrides,
        }


def credential_names(dc: str) -> tuple[str, str]:
    """The variables of ``dc``'s own credentials: ``COOPR_KAFKA_DC1_USERNAME`` and
    ``..._PASSWORD`` (upper case, ``-`` as ``_``)."""
    prefix = "COOPR_KAFKA_" + dc.upper().replace("-", "_")
    return f"{prefix}_USERNAME", f"{prefix}_PASSWORD"


def settings_for(
    site: DataCenter,
    client_id: str,
    *,
    environ: Mapping[str, str] | None = None,
    request_timeout_ms: int = 10_000,
    log_level: int = 3,
) -> KafkaSettings:
    """Settings for ``site``'s Kafka as the topology describes it, with the credentials of
    the environment (``environ``, default ``os.environ``) when it wants SASL_SSL; the other
    arguments as :class:`KafkaSettings` has them.

    Raises :class:`ConfigError` naming the variables to set when a SASL_SSL cluster has no
    credentials; never a value.
    """
    if site.kafka_security != "SASL_SSL":
        return KafkaSettings(
            site.kafka, client_id, request_timeout_ms=request_timeout_ms, log_level=log_level
        )
    username_var, password_var = credential_names(site.name)
    username = _plain(username_var, environ)
    password = load_secret(password_var, environ)
    if username is None and password is None:
        username_var, password_var = "COOPR_KAFKA_USERNAME", "COOPR_KAFKA_PASSWORD"
        username = _plain(username_var, environ)
        password = load_secret(password_var, environ)
    if not username or not password:
        raise ConfigError(
            f"{site.name}'s Kafka wants SASL_SSL: set {username_var} and {password_var} "
            f"(or {password_var}_FILE)",
            field=f"{site.name}.kafka_security",
        )
    return KafkaSettings(
        site.kafka,
        client_id=client_id,
        security_protocol="SASL_SSL",
        sasl_username=username,
        sasl_password=password,
        ssl_ca_location=site.kafka_ca,
        request_timeout_ms=request_timeout_ms,
        log_level=log_level,
    )


def _plain(name: str, environ: Mapping[str, str] | None) -> str | None:
    return (os.environ if environ is None else environ).get(name)
