"""Issue 6, genbench on a Ray cluster.

- ray_cluster.yaml passes Ray's own validator and keeps the control plane private (issue 27:
  MLflow's UI on 127.0.0.1 and a login for the server other nodes reach, the workers' own IAM
  profile, IMDSv2, Ray pinned to a release with token authentication, no unchecked downloads);
- the head's MLflow commands, run here as written;
- a real 2-node Ray cluster on this machine (`ray start --head` + `ray start --address`, 1 CPU
  each, token authentication on) with an `mlflow server` on loopback: `genbench train
  --workers 2` puts one rank on each node and its run is visible through MLflow's REST API;
- `ray job submit` of `genbench train` to that cluster succeeds;
- a multi-node run with no shared storage stops with a one-line error.

The cluster runs in processes this module starts in their own sessions, on free ports, with its
own temp dir and token: it never touches other Ray instances (no `ray stop`), and the pytest
process never connects to it (so it cannot clash with conftest's `ray_local`).
"""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
BIN = Path(sys.executable).parent              # the venv's ray, mlflow and genbench
PRIVATE_PORTS = {5000: "MLflow", 6379: "GCS", 8265: "dashboard / job API", 10001: "Ray client"}
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}
TRAIN = ["--model", "ae", "--steps", "20", "--set", "train.batch_size=32"]


# --- ray_cluster.yaml ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(cluster_config):
    """The config as `ray up` sees it: merged with the provider's defaults.yaml (offline; the
    cloud calls happen later, in the provider's bootstrap_config, which we do not run)."""
    from ray.autoscaler._private.util import prepare_config
    return prepare_config(copy.deepcopy(cluster_config))


def test_cluster_yaml_passes_rays_validator(prepared):
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)  # raises on a schema or node-type error
    assert prepared["provider"]["type"] == "aws"


def test_workers_are_gpu_nodes_that_scale_from_zero(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))  # a CPU head
    assert head["resources"].get("CPU") == 0 and head["max_workers"] == 0
    assert workers
    for name, node in workers.items():
        assert node["min_workers"] == 0, name
        assert node["max_workers"] >= 1, name
        assert node["node_config"]["InstanceType"].split(".")[0][0] in "gp", name  # GPU types


def _ip_rules(prepared) -> list[dict]:
    return prepared["provider"].get("security_group", {}).get("IpPermissions", [])


def test_control_plane_ports_stay_inside_the_cluster(prepared):
    # Ray's generated group admits only its own members plus SSH; extra rules come from
    # provider.security_group.IpPermissions. None may open a private port to the internet.
    for rule in _ip_rules(prepared):
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if not cidrs & PUBLIC_CIDRS:
            continue
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        opened = [name for port, name in PRIVATE_PORTS.items()
                  if rule.get("IpProtocol") == "-1" or low == -1 or low <= port <= high]
        assert not opened, f"{opened} open to the internet: {rule}"
    # A user-supplied group would bypass Ray's intra-group rules: none here.
    for name, node in prepared["available_node_types"].items():
        assert "SecurityGroupIds" not in node["node_config"], name
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert not re.search(r"0\.0\.0\.0|--host[ =]::", head_start)  # nothing on every interface


def test_token_authentication_stays_on(cluster_config, prepared):
    def strings(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield str(k)
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        else:
            yield str(value)

    for text in strings(prepared):  # every value, comments aside
        assert not re.search(r"RAY_AUTH_MODE\W*disabled", text), text
    for key in ("head_setup_commands", "worker_setup_commands"):
        env = " ".join(prepared[key])
        assert "export RAY_AUTH_MODE=token" in env, key
        assert "genbench.env" in env, key  # the file every shell and `ray start` sources
    # Every node gets the same token (the launcher's ~/.ray/auth_token).
    assert cluster_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_head_runs_mlflow_and_jobs_find_it(prepared):
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "mlflow server" in head_start and "--port 5000" in head_start
    assert "--backend-store-uri sqlite:///" in head_start
    assert "--artifacts-destination" in head_start
    assert "mlflow server" not in " ".join(prepared["worker_start_ray_commands"])
    assert "MLFLOW_TRACKING_URI=http://" in " ".join(prepared["head_setup_commands"])
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5001" in " ".join(
        prepared["worker_start_ray_commands"])


def mlflow_servers(commands: list[str]) -> list[dict]:
    """The `mlflow server` invocations in commands: {host, port, app, env (VAR=... before it)}."""
    servers = []
    for command in commands:
        for match in re.finditer(r"mlflow server\s+([^>&]*)", command):
            args = match.group(1).split()
            option = lambda name: args[args.index(name) + 1] if name in args else None
            servers.append({"host": option("--host"), "port": option("--port"),
                            "app": option("--app-name"),
                            "env": command[:match.start()].rsplit(";", 1)[-1]})
    return servers


def test_head_mlflow_is_on_loopback_and_asks_workers_to_log_in(prepared):
    """The UI server listens on 127.0.0.1 (reached through an SSH forward); what genbench logs
    to from any node listens on the head's private address and demands a login."""
    head_start = prepared["head_start_ray_commands"]
    servers = mlflow_servers(head_start)
    assert len(servers) == 2, servers
    ui = next(s for s in servers if s["port"] == "5000")
    assert ui["host"] == "127.0.0.1" and ui["app"] is None
    for server in servers:
        assert server["host"] not in (None, "0.0.0.0", "::", "[::]"), server
        if server["host"] != "127.0.0.1":  # reachable from other nodes: only with a login
            assert server["app"] == "basic-auth", server
            assert server["host"] == "$IP" and "IP=$(hostname -I" in " ".join(head_start)
            assert "MLFLOW_AUTH_CONFIG_PATH=" in server["env"], server
            assert server["port"] == "5001"
    # The auth app's config: no permission for anyone but its admin, whose password is the
    # cluster's Ray token, written with umask 077; a fresh user store at each start.
    auth = next(c for c in head_start if "admin_password" in c)
    assert "umask 077" in auth and "default_permission = NO_PERMISSIONS" in auth
    assert "$(cat ~/.ray/auth_token)" in auth and "rm -f ~/mlflow/auth.db" in auth
    # Every node's genbench logs in, and the URIs name the authenticated server.
    for key in ("head_setup_commands", "worker_setup_commands"):
        env = " ".join(prepared[key])
        assert "export MLFLOW_TRACKING_USERNAME=genbench" in env, key
        assert "export MLFLOW_TRACKING_PASSWORD=$(cat $HOME/.ray/auth_token)" in env, key
    assert re.search(r"MLFLOW_TRACKING_URI=http://\$\(hostname -I[^)]*\):5001",
                     " ".join(prepared["head_setup_commands"]))
    assert "install" in " ".join(prepared["worker_setup_commands"])
    assert '"mlflow[auth]"' in " ".join(prepared["head_setup_commands"])  # the basic-auth app


def test_worker_nodes_have_their_own_iam_profile(prepared):
    # Ray's DEFAULT_RAY_INSTANCE_PROFILE (ray/autoscaler/_private/aws/config.py; importing it
    # needs boto3): the profile `ray up` makes for the head, with EC2 and S3 rights.
    DEFAULT_RAY_INSTANCE_PROFILE = "ray-autoscaler-v1"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]["node_config"].get("IamInstanceProfile")
    # `ray up` gives the head Ray's own profile when the config names none.
    head_profile = (head or {}).get("Name") or (head or {}).get("Arn") or \
        DEFAULT_RAY_INSTANCE_PROFILE
    for name, node in types.items():
        if name == prepared["head_node_type"]:
            continue
        profile = node["node_config"].get("IamInstanceProfile") or {}
        worker_profile = profile.get("Name") or profile.get("Arn")
        assert worker_profile, f"{name}: no IAM instance profile (S3 checkpoints need one)"
        assert worker_profile not in (head_profile, DEFAULT_RAY_INSTANCE_PROFILE), name
        assert not worker_profile.endswith("/" + DEFAULT_RAY_INSTANCE_PROFILE), name


def test_every_node_type_requires_imdsv2(prepared):
    for name, node in prepared["available_node_types"].items():
        options = node["node_config"].get("MetadataOptions", {})
        assert options.get("HttpTokens") == "required", name
        assert options.get("HttpPutResponseHopLimit", 2) <= 2, name  # tokens stay on the host
        assert options.get("HttpEndpoint", "enabled") == "enabled", name  # S3 needs credentials


def test_ray_is_pinned_to_a_release_with_token_authentication(prepared):
    from packaging.requirements import Requirement
    from packaging.version import Version

    token_auth = Version("2.52")  # the first release with RAY_AUTH_MODE=token
    pyproject = (REPO / "pyproject.toml").read_text()
    ray_deps = [Requirement(d) for d in re.findall(r'"(ray\[[^"]*)"', pyproject)]
    assert ray_deps
    for dep in ray_deps:
        floors = [Version(s.version) for s in dep.specifier if s.operator in (">=", "==", "~=")]
        assert floors and min(floors) >= token_auth, dep
    installed = re.findall(r'"ray\[[^"]*\]==([0-9.]+)"', " ".join(prepared["head_setup_commands"]))
    assert installed and all(Version(v) >= token_auth for v in installed)


def test_nothing_is_piped_from_the_network_into_a_shell(prepared):
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for key in keys:
        for command in prepared.get(key, []):
            assert not re.search(r"\b(curl|wget)\b[^;&]*\|\s*(sudo\s+)?(ba|z|da)?sh\b", command), \
                f"{key}: {command}"
            if re.search(r"\b(curl|wget)\b.*\.(whl|tar\.gz|tgz|zip|sh|deb)\b", command):
                # A download is checked against a pinned sha256 before anything uses it.
                assert re.search(r"[0-9a-f]{64}\s+\S+'?\s*\|\s*sha256sum -c", command), command


def test_setup_installs_genbench_from_the_mounted_tree(cluster_config, prepared):
    assert cluster_config["file_mounts"]["~/genbench"] == "."
    setup = " ".join(prepared["worker_setup_commands"])
    assert "-e \"$HOME/genbench" in setup
    import ray
    assert f"ray[default,train,tune]=={ray.__version__}" in setup  # the launcher's Ray


def test_every_cluster_command_is_valid_shell(prepared):
    keys = ("initialization_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    for key in keys:
        for command in prepared[key]:
            check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert check.returncode == 0, f"{key}: {command}\n{check.stderr}"


# --- the head's MLflow servers, for real ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.fault  # make test-faults: the 2-node cluster
def test_head_mlflow_commands_serve_ui_on_loopback_and_genbench_with_a_login(cluster_config,
                                                                              tmp_path,
                                                                              monkeypatch):
    """The head's MLflow commands from ray_cluster.yaml, run on this machine as they are (HOME a
    temp dir with a cluster token, free ports for 5000/5001): the UI server listens on 127.0.0.1
    only, the other on this machine's address with a login, and a run logged with the login
    through the second is what the first shows."""
    from mlflow.tracking import MlflowClient

    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    if not addresses:
        pytest.skip("this machine has no network address for the authenticated server")
    ip = addresses[0]
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(32)
    (home / ".ray" / "auth_token").write_text(token)
    (home / ".ray" / "auth_token").chmod(0o600)
    ui_port, auth_port = free_ports(2)
    script = "\n".join(c for c in cluster_config["head_start_ray_commands"] if "mlflow" in c)
    script = re.sub(r"\b5001\b", str(auth_port), re.sub(r"\b5000\b", str(ui_port), script))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    # Its own session: the servers it leaves running are killed through its process group.
    start = subprocess.Popen(["bash", "-c", script], env=env, cwd=home, start_new_session=True)
    try:
        assert start.wait(timeout=300) == 0
        auth_url, ui_url = f"http://{ip}:{auth_port}", f"http://127.0.0.1:{ui_port}"
        wait_for(lambda: _healthy(auth_url), 180, "basic-auth mlflow server")
        listening = {}
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in (ui_port, auth_port):
                listening.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
        assert listening == {ui_port: {"127.0.0.1"}, auth_port: {ip}}, listening
        assert oct((home / "mlflow" / "auth.ini").stat().st_mode & 0o777) == "0o600"
        search = "/api/2.0/mlflow/experiments/search?max_results=5"
        for password in (None, "not-the-token"):  # no login, a wrong one: refused
            request = urllib.request.Request(auth_url + search)
            if password:
                basic = base64.b64encode(f"genbench:{password}".encode()).decode()
                request.add_header("Authorization", f"Basic {basic}")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 401
        # genbench's way in: the login from the environment (~/genbench.env on the cluster).
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "genbench")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", token)
        client = MlflowClient(auth_url)
        run = client.create_run(client.create_experiment("cluster-auth"))
        client.log_metric(run.info.run_id, "mse", 0.25, step=10)
        (tmp_path / "note.txt").write_text("from rank 0")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        ui = MlflowClient(ui_url)  # the UI server: same store, same artifacts, no login
        assert ui.get_run(run.info.run_id).data.metrics == {"mse": 0.25}
        assert [f.path for f in ui.list_artifacts(run.info.run_id)] == ["note.txt"]
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(start.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)


# --- a real 2-node cluster ----------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for(predicate, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: {p.args[:3]} exited with {p.returncode}")
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def http_json(url: str, token: str | None = None, timeout: float = 10):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def stop_session(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the session this module started (ray start --block stops its own children),
    then SIGKILL whatever is left in that session's process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created with start_new_session
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    # Ray's unix socket paths must stay short: its temp dir lives directly under /tmp.
    ray_tmp = Path(tempfile.mkdtemp(prefix="gb6-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = tmp / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_TRAIN_V2_ENABLED="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    (gcs, dash, client, h_agent, h_grpc, h_renv, h_metrics, w_agent, w_grpc, w_renv, w_metrics,
     mlflow_port) = free_ports(12)
    procs: list[subprocess.Popen] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(tmp / f"{name}.log", "w")
        proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc

    try:
        mlflow = start("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
                                  "--port", str(mlflow_port), "--workers", "1",
                                  "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                                  "--artifacts-destination", str(tmp / "artifacts")])
        head_argv = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "1",
                     "--port", str(gcs), "--include-dashboard", "true",
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                     "--ray-client-server-port", str(client),
                     "--dashboard-agent-listen-port", str(h_agent),
                     "--dashboard-agent-grpc-port", str(h_grpc),
                     "--runtime-env-agent-port", str(h_renv),
                     "--metrics-export-port", str(h_metrics),
                     "--temp-dir", str(ray_tmp), "--disable-usage-stats"]
        address_file = ray_tmp / "ray_current_cluster"
        for attempt in range(2):
            # `ray start` gives its raylet a fixed 30 s to register (ray/_private/node.py):
            # on 2 busy cores it can miss that once; a second try starts afresh
            head = start(f"head{attempt}", head_argv)
            try:
                address = wait_for(lambda: address_file.is_file()
                                   and address_file.read_text().strip(), 120, "Ray head",
                                   [head])
                break
            except RuntimeError:
                if attempt:
                    raise
                stop_session(head)
        worker_argv = [str(BIN / "ray"), "start", "--block", "--num-cpus", "1",
                       "--address", address,
                       "--dashboard-agent-listen-port", str(w_agent),
                       "--dashboard-agent-grpc-port", str(w_grpc),
                       "--runtime-env-agent-port", str(w_renv),
                       "--metrics-export-port", str(w_metrics), "--disable-usage-stats"]
        nodes = {"worker": start("worker", worker_argv)}

        def lose_worker_node() -> None:
            """The worker machine is gone: every process of that node SIGKILLed at once."""
            os.killpg(nodes["worker"].pid, signal.SIGKILL)
            nodes["worker"].wait(10)

        def bring_back_worker_node() -> None:
            nodes["worker"] = start("worker-again", worker_argv)
        dashboard = f"http://127.0.0.1:{dash}"

        def alive_nodes():
            try:
                nodes = http_json(f"{dashboard}/api/v0/nodes?limit=100", token)
            except (OSError, ValueError):
                return None
            ids = [n["node_id"] for n in nodes["data"]["result"]["result"]
                   if n["state"] == "ALIVE"]
            return ids if len(ids) == 2 else None

        node_ids = wait_for(alive_nodes, 120, "two alive Ray nodes", procs)
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: _healthy(mlflow_url), 150, "mlflow server", [mlflow])
        env = {**env, "MLFLOW_TRACKING_URI": mlflow_url}
        yield SimpleNamespace(address=address, dashboard=dashboard, mlflow=mlflow_url,
                              token=token, env=env, tmp=tmp, ray_tmp=ray_tmp,
                              node_ids=set(node_ids), lose_worker_node=lose_worker_node,
                              bring_back_worker_node=bring_back_worker_node,
                              alive_nodes=alive_nodes)
    finally:
        for proc in reversed(procs):  # worker node, head, then MLflow
            stop_session(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def genbench(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "python"), "-m", "genbench", "train", *args], env=cluster.env,
                          cwd=cluster.tmp, capture_output=True, text=True, timeout=timeout)


def mlflow_run(cluster, run_id: str) -> dict:
    return http_json(f"{cluster.mlflow}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]


def run_id_from(output: str) -> str:
    found = re.search(r"MLflow run\s+([0-9a-f]{32})", output)
    assert found, output[-3000:]
    return found.group(1)


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: the 2-node cluster
def test_train_spreads_two_workers_over_two_nodes(cluster):
    out = genbench(cluster, *TRAIN, "--workers", "2", "--address", cluster.address,
                   "--storage-path", str(cluster.tmp / "storage"), "--experiment", "cluster")
    assert out.returncode == 0, out.stderr[-3000:]
    run = mlflow_run(cluster, run_id_from(out.stdout))   # through the server's REST API
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["mse"] > 0 and "val_mse" in metrics
    history = http_json(f"{cluster.mlflow}/api/2.0/mlflow/metrics/get-history?"
                        f"run_id={run['info']['run_id']}&metric_key=mse")["metrics"]
    assert max(m["step"] for m in history) == 20
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    placed = {tags["genbench.node.rank0"], tags["genbench.node.rank1"]}
    assert placed == cluster.node_ids  # one rank on each node
    # Rank 0 uploaded its artifacts through the server, onto the "head's disk".
    listed = http_json(f"{cluster.mlflow}/api/2.0/mlflow/artifacts/list?"
                       f"run_id={run['info']['run_id']}")
    assert "checkpoint" in {f["path"] for f in listed.get("files", [])}
    assert list((cluster.tmp / "artifacts").rglob("checkpoint.pt"))


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: the 2-node cluster
def test_ray_job_submit_runs_genbench_train(cluster):
    # Token authentication is on: the job API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        http_json(f"{cluster.dashboard}/api/jobs/")
    assert refused.value.code == 401
    job_id = f"genbench-test-{secrets.token_hex(4)}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": cluster.mlflow}}
    out = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard,
         "--submission-id", job_id, "--runtime-env-json", json.dumps(runtime_env), "--",
         str(BIN / "python"), "-m", "genbench", "train", *TRAIN, "--workers", "1", "--storage-path",
         str(cluster.tmp / "job-storage"), "--experiment", "cluster-job"],
        env=cluster.env, cwd=cluster.tmp, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    job = http_json(f"{cluster.dashboard}/api/jobs/{job_id}", cluster.token)
    assert job["status"] == "SUCCEEDED"
    run = mlflow_run(cluster, run_id_from(out.stdout + out.stderr))
    assert run["info"]["status"] == "FINISHED"
    assert {m["key"] for m in run["data"]["metrics"]} >= {"mse", "val_mse"}


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: the 2-node cluster
def test_a_shell_on_the_head_joins_the_running_cluster(cluster):
    # A driver that connected by itself (a bare ray.init() finds the `ray start` cluster through
    # its temp dir) and then calls genbench: a cluster it joined (it may autoscale). genbench's
    # own init_ray never joins unasked: on the head, ray_cluster.yaml sets RAY_ADDRESS.
    code = ("import ray, sys; ray.init(_temp_dir=sys.argv[1], logging_level='ERROR'); "
            "from pipeline.cluster import joined_cluster; "
            "print('joined', joined_cluster(), len(ray.nodes()))")
    out = subprocess.run([sys.executable, "-c", code, str(cluster.ray_tmp)], env=cluster.env,
                         cwd=cluster.tmp, capture_output=True, text=True, timeout=120)
    assert "joined True 2" in out.stdout, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: the 2-node cluster
def test_multi_node_run_without_shared_storage_is_refused(cluster):
    out = genbench(cluster, *TRAIN, "--workers", "2", "--address", cluster.address,
                   "--experiment", "cluster-no-storage", timeout=180)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("genbench: error:")]
    assert len(errors) == 1 and "--storage-path" in errors[0] and "shared storage" in errors[0]
    assert "Traceback" not in out.stderr
    # Refused before anything was logged: the experiment was never created.
    with pytest.raises(urllib.error.HTTPError):
        http_json(f"{cluster.mlflow}/api/2.0/mlflow/experiments/get-by-name?"
                  f"experiment_name=cluster-no-storage")


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: the 2-node cluster
def test_a_run_that_loses_a_node_for_45_s_finishes_when_it_returns(cluster):
    """Rank 0 pauses after step 25 (checkpoint at 20) of a 2-node run; the worker node is
    SIGKILLed whole and comes back 45 s later. Ray Train restarts the group once both nodes are
    there, from step 20, and the run finishes with one point per logged step."""
    env = {**cluster.env, "GENBENCH_FAULT": "rank=0,step=25,action=pause,seconds=10"}
    proc = subprocess.Popen(
        [str(BIN / "python"), "-m", "genbench", "train", "--model", "ae", "--steps", "40",
         "--workers", "2", "--set", "train.batch_size=32", "--set", "train.log_every=10",
         "--set", "train.checkpoint_every=20", "--set", "train.checkpoint_min_interval_s=0",
         "--address", cluster.address, "--storage-path", str(cluster.tmp / "storage-loss"),
         "--experiment", "cluster-node-loss"],
        env=env, cwd=cluster.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def paused_run_id():
            try:
                found = http_json(f"{cluster.mlflow}/api/2.0/mlflow/experiments/get-by-name?"
                                  f"experiment_name=cluster-node-loss")
                exp = found["experiment"]["experiment_id"]
                runs = json.loads(urllib.request.urlopen(urllib.request.Request(
                    f"{cluster.mlflow}/api/2.0/mlflow/runs/search",
                    data=json.dumps({"experiment_ids": [exp]}).encode(),
                    headers={"Content-Type": "application/json"}), timeout=10).read())
            except (OSError, ValueError, KeyError):
                return None
            for run in runs.get("runs", []):
                if any(t["key"] == "genbench.fault_fired" for t in run["data"].get("tags", [])):
                    return run["info"]["run_id"]
            return None

        run_id = wait_for(paused_run_id, 300, "the paused run", [proc])
        cluster.lose_worker_node()
        time.sleep(45)
        cluster.bring_back_worker_node()
        out, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # last in this module: the worker node came back with a new node id (ray.nodes() lists
    # the dead one too)
    cluster.node_ids = set(wait_for(cluster.alive_nodes, 120, "two alive Ray nodes again"))
    assert proc.returncode == 0, err[-3000:]
    run = mlflow_run(cluster, run_id)
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["genbench.resumed_from_step"] == "20"
    history = http_json(f"{cluster.mlflow}/api/2.0/mlflow/metrics/get-history?"
                        f"run_id={run_id}&metric_key=mse")["metrics"]
    assert sorted(m["step"] for m in history) == [10, 20, 30, 40]
