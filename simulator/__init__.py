"""The stand-in Coopr server: a client of the producer API that runs realistic jobs.

It plans jobs from a catalogue of services and templates (:mod:`simulator.catalogue`,
:mod:`simulator.planning`), derives what Coopr records at each step (:mod:`simulator.views`),
stores clusters and plans as JSON (:mod:`simulator.json_forms`) and runs the whole as one
DC's server, writing through the outbox (:mod:`simulator.server`).
"""

from simulator.ids import IdSpace, format_cluster_id, id_space, job_id, next_job_number, task_id
from simulator.json_forms import (
    cluster_from_json,
    cluster_to_json,
    node_from_json,
    node_to_json,
    plan_from_json,
    plan_to_json,
)
from simulator.planning import (
    MAX_ATTEMPTS,
    JobPlan,
    PlannedTask,
    Resumption,
    choose_action,
    new_cluster,
    plan_job,
    plan_restart,
)
from simulator.server import SimulationStats, SimulatorConfig, run_simulation
from simulator.views import checkpoint_view, completion_view

__all__ = [
    "MAX_ATTEMPTS",
    "IdSpace",
    "JobPlan",
    "PlannedTask",
    "Resumption",
    "SimulationStats",
    "SimulatorConfig",
    "checkpoint_view",
    "choose_action",
    "cluster_from_json",
    "cluster_to_json",
    "completion_view",
    "format_cluster_id",
    "id_space",
    "job_id",
    "new_cluster",
    "next_job_number",
    "node_from_json",
    "node_to_json",
    "plan_from_json",
    "plan_job",
    "plan_restart",
    "plan_to_json",
    "run_simulation",
    "task_id",
]
