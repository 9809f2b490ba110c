"""MLflow conventions, in one place, and tracking that never loses a result.

Conventions (docs/mlflow.md):
- experiment: `mlflow.experiment`, else the config's `experiment`;
- one parent run per workflow invocation (`<experiment>@<time>`, tag `lcsc.role=invocation`) and
  one child run per job, named `<rule>[<wildcards>]`, e.g. `evaluate[model=dm,variant=lcsc]`;
- tags: `lcsc.stage`, `lcsc.model`, `lcsc.variant`, `lcsc.nfe` (the search NFE, or the evaluated
  NFEs), `lcsc.dataset`, `lcsc.features`, `lcsc.experiment`, `lcsc.config_hash`, `lcsc.git_commit`,
  `lcsc.invocation`, and `lcsc.run_key` / `lcsc.logged` for re-logging;
- params: the config sections the stage reads, as dotted keys (`search.budget`);
- metrics with steps: `train_loss` by iteration, `fitness` / `best_fitness` by evaluation, `fid`
  by NFE; artifacts: plots, coefficients and evaluation JSON, the report; never checkpoints.

The parent's id travels to every job in LCSC_MLFLOW_PARENT_RUN_ID (not MLFLOW_RUN_ID, which would
make every job resume the parent itself), the invocation's id in LCSC_INVOCATION.

Resilience: every run is also written to `<results>/<experiment>/tracking/<invocation>/<name>.json`
(tags, params, every metric, artifact paths, status) when the job ends. If the tracking store is
unreachable or fails, the job prints one warning, stops logging and finishes its work;
`lcsc mlflow-sync` later logs every run from those records that the store lacks or holds only in
part, and does nothing for runs already complete (tag `lcsc.logged=complete`), so it can be run
again and again.

The package: `names` (runs, tags, environment), `records` (the records on disk), `client` (the
MLflow store), `run` (the parent and child runs), `sync` and `server`.
"""

from .client import end_orphan_runs, store_client
from .names import (
    COMPLETE,
    DEFERRED_STAGES,
    HTTP_DEFAULTS,
    INVOCATION_ENV,
    PARENT_ENV,
    config_hash,
    display_name,
    experiment_name,
    git_commit,
    job_name,
    new_invocation,
    run_name,
    stage_tags,
    tracking_uri,
)
from .records import end_orphan_records, record_path, records_dir, write_record
from .run import StageRun, end_parent, start_parent
from .server import serve
from .sync import sync

__all__ = [
    "COMPLETE",
    "DEFERRED_STAGES",
    "HTTP_DEFAULTS",
    "INVOCATION_ENV",
    "PARENT_ENV",
    "StageRun",
    "config_hash",
    "display_name",
    "end_orphan_records",
    "end_orphan_runs",
    "end_parent",
    "experiment_name",
    "git_commit",
    "job_name",
    "new_invocation",
    "record_path",
    "records_dir",
    "run_name",
    "serve",
    "stage_tags",
    "start_parent",
    "store_client",
    "sync",
    "tracking_uri",
    "write_record",
]
