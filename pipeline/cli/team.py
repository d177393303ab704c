"""Team services on one host: an MLflow tracking server on PostgreSQL with proxied artifacts,
the Optuna database, and the lines each teammate exports (`python -m pipeline.cli.team --help`)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from pipeline.core.errors import PipelineError, StoreError
from pipeline.core.services import check_database, check_server, mask

DEFAULT_ADMIN_DB = "postgresql://127.0.0.1:5432/postgres"


def is_loopback(host: str) -> bool:
    """True when a bind address only accepts connections from this host."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def ensure_database(admin_url: str, name: str) -> str:
    """Create database `name` on the admin URL's server if missing; return its URL."""
    check_database(admin_url, "--database")
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                      poolclass=sqlalchemy.NullPool)
    with engine.connect() as conn:
        exists = conn.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                              {"n": name}).scalar()
        if not exists:
            # Identifiers cannot be bound parameters; the name is checked by the caller.
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` (tests), closing other sessions on it first."""
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                      poolclass=sqlalchemy.NullPool)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = :n AND pid <> pg_backend_pid()"),
                     {"n": name})
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


def auth_config(state: Path, auth_db: str) -> dict[str, str]:
    """Environment for `--app-name basic-auth`: config file and a persistent CSRF secret."""
    state.mkdir(parents=True, exist_ok=True)
    secret = state / "flask_secret"
    if not secret.exists():
        secret.touch(mode=0o600)
        secret.write_text(secrets.token_hex(32))
    ini = state / "basic_auth.ini"
    # Teammates log into the shared experiment, so signed-in users may edit by default;
    # requests without valid credentials get 401. The admin password comes only from the
    # environment (MLFLOW_AUTH_ADMIN_PASSWORD), never from this file.
    ini.write_text("[mlflow]\ndefault_permission = EDIT\n"
                   f"database_uri = {auth_db}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    ini.chmod(0o600)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret.read_text().strip()}


def server_command(artifacts: str, host: str, port: int, auth: bool,
                   workers: int = 2, allowed_hosts: str | None = None) -> list[str]:
    """The `mlflow server` command line: artifacts proxied over HTTP; the PostgreSQL store
    comes from MLFLOW_BACKEND_STORE_URI (a password on a command line is public in `ps`)."""
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server",
           "--artifacts-destination", artifacts,
           "--serve-artifacts", "--host", host, "--port", str(port), "--workers", str(workers)]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll the server until it answers (a 401 from an auth server counts as up)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise StoreError(f"mlflow server exited with code {process.returncode} before "
                             f"answering at {url}; see its log above")
        try:
            check_server(url)
            return
        except StoreError as err:
            if "(401" in str(err):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"mlflow server did not answer within {timeout:.0f} s: "
                                 f"{err}") from None
        time.sleep(0.5)


def start_server(admin_url: str, prefix: str, state: Path, host: str = "127.0.0.1",
                 port: int = 5000, auth: bool | None = None, workers: int = 2,
                 allowed_hosts: str | None = None, log: Path | None = None
                 ) -> tuple[subprocess.Popen, dict[str, str]]:
    """Create the databases, start `mlflow server` and wait for it; return it and the exports."""
    if not prefix.replace("_", "").isalnum():
        raise PipelineError(f"--prefix {prefix!r}: use letters, digits and underscores")
    auth = (not is_loopback(host)) if auth is None else auth
    if not auth and not is_loopback(host):
        raise PipelineError(f"--host {host}: refusing an open server beyond loopback; "
                            "drop --no-auth")
    # The server's job runner (eight huey processes for GenAI jobs) serves nothing we use.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    if auth:
        if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            raise PipelineError("authentication is on: set MLFLOW_AUTH_ADMIN_PASSWORD (the "
                                "admin password MLflow creates on first start)")
        env.update(auth_config(state, ensure_database(admin_url, f"{prefix}_auth")))
    env["MLFLOW_BACKEND_STORE_URI"] = ensure_database(admin_url, f"{prefix}_mlflow")
    optuna_db = ensure_database(admin_url, f"{prefix}_optuna")
    artifacts = state / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = server_command(str(artifacts.resolve()), host, port, auth, workers, allowed_hosts)
    out = open(log, "ab") if log else None  # noqa: SIM115 -- the server outlives this call
    process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                               start_new_session=True)
    wildcard = host in ("0.0.0.0", "::")
    # Teammates address a wildcard bind by this host's name; this host probes loopback.
    url = f"http://{platform.node() if wildcard else host}:{port}"
    try:
        wait_until_up(f"http://127.0.0.1:{port}" if wildcard else url, process)
    except BaseException:
        stop_server(process)
        raise
    exports = {"MLFLOW_TRACKING_URI": url, "OPTUNA_STORAGE": optuna_db}
    return process, exports


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server and its workers (they share its process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def instructions(exports: dict[str, str], remote: str, auth: bool) -> str:
    """What to tell teammates: the exports (passwords masked) and the DVC remote line."""
    lines = [f"export {k}={shlex.quote(mask(v))}" for k, v in exports.items()]
    if auth:
        lines += ["export MLFLOW_TRACKING_USERNAME=<your user>  # created by the admin",
                  "export MLFLOW_TRACKING_PASSWORD=<your password>"]
    lines += [f"dvc remote add -d team {shlex.quote(remote)}  # once per clone; or s3://…, ssh://…",
              "dvc push  # after dvc repro; teammates: git pull && dvc pull && dvc repro"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Start the team's MLflow server in the foreground and print what teammates export."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", default=os.environ.get("PIPELINE_TEAM_DATABASE",
                                                             DEFAULT_ADMIN_DB),
                        help="PostgreSQL URL allowed to create databases (default: %(default)s)")
    parser.add_argument("--prefix", default="pipeline",
                        help="database names: PREFIX_mlflow, PREFIX_optuna, PREFIX_auth")
    parser.add_argument("--state-dir", type=Path, default=Path(".team"),
                        help="artifacts, auth config and secret (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="bind address; anything but loopback turns authentication on")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                        help="basic auth (default: on unless bound to loopback)")
    parser.add_argument("--allowed-hosts", help="passed to mlflow server (names teammates use)")
    parser.add_argument("--dvc-remote", default=None,
                        help="shared folder or s3://… for `dvc remote add` (default: "
                        "STATE_DIR/dvc-remote)")
    args = parser.parse_args(argv)
    try:
        process, exports = start_server(args.database, args.prefix, args.state_dir, args.host,
                                        args.port, args.auth, args.workers, args.allowed_hosts)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    remote = args.dvc_remote or str((args.state_dir / "dvc-remote").resolve())
    auth = args.auth if args.auth is not None else not is_loopback(args.host)
    print(instructions(exports, remote, auth), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: stop_server(process))
    try:
        process.wait()
    except KeyboardInterrupt:
        stop_server(process)


if __name__ == "__main__":
    main()
