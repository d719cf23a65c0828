"""The secured pipeline (docs/security.md): settings that never show a password, and on the
secured stack (``witness_stack``, ``stack up --secure``) clients without the right
credentials refused, a relay refused a topic it has no grant for, the whole pipeline with a
failover, and no secret in any log or output."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._acl import AclBindingFilter, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

from bench.failover import FailoverRun
from cli.demo import DemoRow, run_demo
from cli.lookup import topic_names
from pipeline.acls import principal_name
from pipeline.errors import ConfigError, UnreachableError
from pipeline.kafka_config import KafkaSettings, settings_for
from pipeline.stack.security import create_acls
from pipeline.topics import mirrored, shard_topic
from pipeline.topology import DataCenter, parse_topology
from tests.cli_helpers import run_cli
from tests.conftest import RunningStack
from tests.outbox_helpers import INERT_IDS_FROM, publish_events, shard_backlog
from tests.ownership_helpers import ownership, wait_until
from tests.workers import WorkerProcess

SECURED = DataCenter(
    "dc1", "127.0.0.1:1", "postgresql://x@h/db", kafka_security="SASL_SSL", kafka_ca="/ca.pem"
)


def test_a_password_reaches_librdkafka_and_no_repr() -> None:
    settings = settings_for(
        SECURED, "t", environ={"COOPR_KAFKA_USERNAME": "u", "COOPR_KAFKA_PASSWORD": "s3cr3t-pw"}
    )
    assert settings.common()["sasl.password"] == "s3cr3t-pw"
    assert settings.common()["ssl.ca.location"] == "/ca.pem"
    assert "s3cr3t-pw" not in repr(settings) and "s3cr3t-pw" not in str(settings)


def test_no_workers_settings_show_a_password_in_their_repr() -> None:
    from consumer.applier import ApplierConfig
    from controller.worker import ControllerConfig
    from producer.relay import RelayConfig

    kafka = settings_for(
        SECURED, "t", environ={"COOPR_KAFKA_USERNAME": "u", "COOPR_KAFKA_PASSWORD": "kafka-pw-1"}
    )
    dsn = "postgresql://coopr:db-pw-1@h/coopr"
    topology = parse_topology(
        {"shard_count": 2, "dc": [{"name": n, "kafka": "h:1", "database": dsn} for n in "ab"]}
    )
    configs = [
        RelayConfig(dc="a", database=dsn, kafka=kafka),
        ApplierConfig(dc="a", database=dsn, kafka=kafka, topics=()),
        ControllerConfig(dc="a", kafka=kafka, topology=topology, database=dsn),
    ]
    for config in configs:
        assert "kafka-pw-1" not in repr(config) and "db-pw-1" not in repr(config), config


def test_a_dc_of_its_own_credentials_wins_over_the_common_ones() -> None:
    environ = {
        "COOPR_KAFKA_USERNAME": "common",
        "COOPR_KAFKA_PASSWORD": "common-pw",
        "COOPR_KAFKA_DC1_USERNAME": "mine",
        "COOPR_KAFKA_DC1_PASSWORD": "mine-pw",
    }
    settings = settings_for(SECURED, "t", environ=environ)
    assert (settings.sasl_username, settings.sasl_password) == ("mine", "mine-pw")


def test_missing_credentials_name_the_variables_and_no_value() -> None:
    with pytest.raises(ConfigError) as e:
        settings_for(SECURED, "t", environ={"COOPR_KAFKA_PASSWORD": "lonely-pw"})
    assert "COOPR_KAFKA_USERNAME" in str(e.value) and "lonely-pw" not in str(e.value)


def test_a_wrong_kafka_security_names_the_field() -> None:
    raw = {
        "shard_count": 2,
        "dc": [
            {
                "name": "dc1",
                "kafka": "h:1",
                "database": "postgresql://h/db",
                "kafka_security": "SSL",
            },
            {"name": "dc2", "kafka": "h:2", "database": "postgresql://h/db"},
        ],
    }
    with pytest.raises(ConfigError, match=r"dc\[0\]\.kafka_security"):
        parse_topology(raw)


#: Every worker log and command output of this module, searched for secrets at its end.
_outputs: list[str] = []
_logs: list[Path] = []


@pytest.fixture
def secured(witness_stack: RunningStack) -> RunningStack:
    assert witness_stack.security is not None, "witness_stack runs `stack up --secure`"
    return witness_stack


def _env_without_credentials() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COOPR_KAFKA_")}


@pytest.mark.stack
def test_clients_without_the_right_credentials_are_refused(
    secured: RunningStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = secured.dc("dc1")
    # A command run without credentials says what to set, and does not try.
    done = run_cli(
        secured.topology_file, "ownership", "show", "--dc", "dc1",
        expect=None, env=_env_without_credentials(),
    )  # fmt: skip
    _outputs.append(done.stdout + done.stderr)
    assert done.returncode != 0
    assert "COOPR_KAFKA_USERNAME" in done.stderr and "COOPR_KAFKA_PASSWORD" in done.stderr
    # A client in the clear, or one with a wrong password, is refused by the broker.
    plain = KafkaSettings(site.kafka, client_id="tests", log_level=0)
    with pytest.raises(Exception):  # noqa: B017 - librdkafka says only "transport failure"
        AdminClient(plain.admin()).list_topics(timeout=3)
    monkeypatch.setenv("COOPR_KAFKA_USERNAME", principal_name("operator"))
    monkeypatch.setenv("COOPR_KAFKA_PASSWORD", "not-the-password")
    with pytest.raises(UnreachableError, match=r"refused us.*[Aa]uthentication failed"):
        topic_names(site, 5.0)
    # The operator's own credentials list the topics.
    monkeypatch.delenv("COOPR_KAFKA_PASSWORD")
    assert secured.security is not None
    password = secured.security.password_file(principal_name("operator"))
    monkeypatch.setenv("COOPR_KAFKA_PASSWORD_FILE", str(password))
    assert shard_topic(0) in topic_names(site, 10.0)


def _produce_as(settings: KafkaSettings, topic: str) -> KafkaError | None:
    """Produce one record; the delivery error, None when it was acknowledged."""
    reports: list[KafkaError | None] = []
    producer = Producer({**settings.producer(), "message.timeout.ms": 10_000})
    producer.produce(topic, b"x", on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(15)
    assert reports, f"no delivery report for {topic}"
    return reports[0]


@pytest.mark.stack
def test_a_relay_may_write_only_its_own_dcs_shard_topics(secured: RunningStack) -> None:
    assert secured.security is not None
    relay = secured.security.worker_environ("relay", "dc1")
    assert relay is not None
    dc1, dc2 = secured.dc("dc1"), secured.dc("dc2")
    as_relay = settings_for(dc1, "tests", environ=relay)
    err = _produce_as(as_relay, mirrored("dc2", shard_topic(0)))
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # In dc2's Kafka dc1's relay is nobody.
    assert _produce_as(settings_for(dc2, "tests", environ=relay), shard_topic(0)) is not None


@pytest.mark.stack
@pytest.mark.slow
def test_a_shard_topic_the_relay_may_not_write_blocks_that_shard_only(
    secured: RunningStack,
) -> None:
    dc = "dc1"
    site = secured.dc(dc)
    leased = [
        s for s, (owner, _, writable) in ownership(secured, dc).items() if owner == dc and writable
    ]
    assert len(leased) >= 2, "dc1 owns shards under a running lease"
    victim, other = leased[:2]
    topic = shard_topic(victim)
    refused = AclBindingFilter(
        ResourceType.TOPIC, topic, ResourcePatternType.LITERAL,
        f"User:{principal_name('relay', dc)}", "*", AclOperation.WRITE, AclPermissionType.ALLOW,
    )  # fmt: skip
    admin = AdminClient(secured.kafka(dc).admin())
    for future in admin.delete_acls([refused], request_timeout=30).values():
        assert len(future.result()) == 1, "the relay's WRITE on the topic was there"
    relay = WorkerProcess(
        secured.topology_file,
        *("worker", "relay", "--dc", dc, "--poll-interval", "0.2"),
        env=secured.worker_env("relay", dc),
    )
    _logs.append(relay.log)
    try:
        relay.wait_health("role", "active", 30)
        start = INERT_IDS_FROM + 3_000_000
        for shard in (victim, other):
            publish_events(site.database, shard, secured.topology.shard_count, 5, inert_from=start)
        wait_until(lambda: shard_backlog(site.database, other) == 0, 30, "the other shard flows")
        wait_until(
            lambda: str(victim) in ((relay.health() or {}).get("blocked_shards") or {}),
            30,
            "the refused shard is blocked",
        )
        reason = (relay.health() or {})["blocked_shards"][str(victim)]
        assert re.search(r"authori[sz]", reason, re.I), reason
        assert shard_backlog(site.database, victim) == 5, "nothing refused is marked published"
    finally:
        create_acls(secured.kafka(dc), secured.topology, site)
    wait_until(lambda: shard_backlog(site.database, victim) == 0, 60, "the shard drains")
    relay.wait_health("blocked_shards", {}, 15)
    assert relay.terminate() == 0


@pytest.fixture
def demo_logs(secured: RunningStack) -> Iterator[None]:
    yield
    _logs.extend(sorted((secured.run_dir / "logs").glob("demo-*.log")))


@pytest.mark.stack
@pytest.mark.slow
def test_the_whole_pipeline_replicates_and_fails_over_on_the_secured_stack(
    secured: RunningStack, demo_logs: None
) -> None:
    rows, failover = run_demo(
        secured.topology, secured.run_dir, duration_s=10, rate=20, failure_timeout_s=6
    )
    _check_demo(rows, failover)


def _check_demo(rows: list[DemoRow], failover: FailoverRun | None) -> None:
    for row in rows:
        assert row.published > 0 and row.applied > 0, row
        assert 0 < row.p50_ms < 10_000, row
    assert failover is not None and failover.moved, "the drill moved the victim's shards"
    assert all(new != failover.victim for _, new, _, _ in failover.moved.values())
    assert 6 < failover.first_write_s < 60, failover
    assert failover.completed == failover.restarts, failover


@pytest.mark.stack
def test_no_secret_appears_in_any_log_or_output(secured: RunningStack) -> None:
    security = secured.security
    assert security is not None
    values = {p.name: p.read_text() for p in security.secrets_dir.glob("*.password")}
    keys = {p.name: p.read_text() for p in security.tls_dir.glob("*.key")}
    assert len(values) >= 10 and len(keys) >= 4, (sorted(values), sorted(keys))
    for path in [*security.secrets_dir.iterdir(), *security.tls_dir.glob("*.key")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    secrets = {**values, **{name: _key_body(text) for name, text in keys.items()}}
    texts = {str(p): p.read_text(errors="replace") for p in (secured.run_dir / "logs").iterdir()}
    texts |= {str(p): p.read_text(errors="replace") for p in _logs if p.exists()}
    texts |= {f"output {i}": out for i, out in enumerate(_outputs)}
    assert any("kafka-" in name for name in texts), "the brokers' logs were searched"
    leaks = [
        f"{secret} in {where}"
        for secret, value in secrets.items()
        for where, text in texts.items()
        if value in text
    ]
    assert not leaks, leaks
    # The processes' command lines hold no secret either.
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not [s for s, v in secrets.items() if v in cmdline], cmdline[:200]


def _key_body(pem: str) -> str:
    """The base64 of a PEM key, one line, as it would show if printed."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))[:48]
