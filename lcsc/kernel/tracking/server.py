"""`lcsc mlflow-server`: an MLflow tracking server over the results' store."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from .names import tracking_uri


def serve(cfg: dict, host: str, port: int, workers: int = 1, allowed_hosts: str | None = None) -> int:
    """Run a tracking server over the results' store (`mlflow server`, in the foreground).
    Artifacts stay in `<results_dir>/mlartifacts` as plain files (no artifact proxy), the layout
    jobs that write to the SQLite file directly use too, so both can be mixed."""
    # The results' own SQLite store even when mlflow.tracking_uri is set: a config that points the
    # jobs at this server names the server there, not its store.
    uri = tracking_uri(dict(cfg, mlflow=dict(cfg["mlflow"], tracking_uri=None)))
    artifacts = (Path(cfg["results_dir"]) / "mlartifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--no-serve-artifacts",
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    name = host
    if host not in ("127.0.0.1", "localhost", "::1"):
        name = socket.gethostname()
        # MLflow answers only requests addressed to localhost or private IPs unless told otherwise
        allowed_hosts = allowed_hosts or ",".join(
            sorted({f"{h}:*" for h in (name, socket.getfqdn(), "localhost", "127.0.0.1")})
        )
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    print(
        f"[lcsc] MLflow tracking server over {uri} at http://{name}:{port} (runs: "
        f"http://{name}:{port}/#/experiments); point jobs at it with mlflow.tracking_uri: "
        f"http://{name}:{port}. It has no authentication: bind it to a network you trust.",
        flush=True,
    )
    # exec rather than a child process: Ctrl-C and signals reach the server itself.
    os.execv(sys.executable, cmd)
    return 0  # not reached: the server replaces this process
