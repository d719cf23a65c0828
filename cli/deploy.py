"""``coopr-pipeline deploy render``: production artifacts from the topology file."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import topology_option
from deployment import TARGETS, Installed, render
from pipeline.topology import load_topology

__all__ = ["deploy"]

_DEFAULTS = Installed()


@click.group()
def deploy() -> None:
    """Production artifacts rendered from the topology."""


@deploy.command("render")
@click.option("--target", type=click.Choice(sorted(TARGETS)), required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write into (created if missing; files of the same names are replaced).",
)
@click.option(
    "--executable",
    default=_DEFAULTS.executable,
    show_default=True,
    help="The installed coopr-pipeline that systemd units run (an absolute path).",
)
@click.option(
    "--image",
    default=_DEFAULTS.image,
    show_default=True,
    help="The container image the Kubernetes Deployments run (deploy/Containerfile).",
)
@topology_option
def deploy_render(target: str, out: Path, executable: str, image: str, topology_file: Path) -> None:
    """Render TARGET's files for every DC of the topology: `mm2` (one MirrorMaker 2 config
    per target DC), `kafka` (broker settings and topic creation per DC), `systemd` (a unit per
    worker and DC), `k8s` (a file of manifests per DC: the workers, their topology, Strimzi
    topics, Kafka users with their ACLs and MirrorMaker 2)."""
    if not executable.startswith("/"):
        raise click.BadParameter("systemd needs an absolute path", param_hint="--executable")
    topology = load_topology(topology_file)
    for path in render(topology, target, out, Installed(executable, image)):
        click.echo(str(path))
