"""python -m jobs.serve --checkpoint C --config NAME_infer [--port 8000] [--num-gpus 1] [--api-key K]

Serves a trained pi0.6 policy on a local Ray (or the cluster named by RAY_ADDRESS) as a Ray Serve
application speaking openpi's websocket protocol (actors/serve_app.py): `adv_ind` fixed to
`positive`, requests batched across connections. C is a training run directory (its latest step)
or one step directory. It logs "ready" only once a websocket handshake on the port has returned
the metadata frame, because openpi-client 0.1.2 does not retry a refused connection. Runs until
interrupted. On a cluster use `serve deploy cluster/serve.yaml` instead.

`--direct-ingress` takes the Serve proxy out of the path: each node's ingress replica listens on the
port itself (Ray's experimental direct ingress), saving the proxy's hop on every message (~2 ms
of a 450 KB observation's round trip on the CPU machine). On a local Ray this job sets the
environment it needs; a cluster's nodes need `direct_ingress_env(port)` where Ray starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from typing import Annotated, Any

import ray
import tyro
from etils import epath
from ray import serve

from actors import serve_app
from jobs import cli
from recap_ray.models import checkpoints
from recap_ray.serve import app_config, policy, ws_client

# Ray settings of the local cluster `start` creates (on a cluster: the nodes' environment).
RAY_ENV = {
    # Messages up to 4 MiB (an observation of three cameras: 0.5-3 MB) go from the proxy to the
    # ingress inline with Ray's reply instead of through the object store (Ray's default: 100 KiB).
    "RAY_max_direct_call_object_size": str(4 << 20),
    # The proxy calls the ingress over gRPC instead of Ray actor calls: each answer reaches the client
    # ~0.3 ms sooner (CPU, batch 1).
    "RAY_SERVE_PROXY_USE_GRPC": "1",
}

logger = logging.getLogger(__name__)


def direct_ingress_env(port: int) -> dict[str, str]:
    """Environment every node needs for `--direct-ingress` on `port`: Ray's direct ingress on, and a port
    range of that one port, so each node's ingress replica (one per node) listens on it.

    A dead replica's port is reused after 65 s, not Ray's 150 s: Serve binds without SO_REUSEADDR, so a
    bind while the dead replica's connections sit in TIME_WAIT (60 s) fails, and Ray then blocks the port
    for good (seen with 0 s). Measured on CPU: a killed ingress replica answers again after 67-75 s.
    """
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive
        "RAY_SERVE_PORT_QUARANTINE_S": "65",
    }


def _check_direct_ingress_env(port: int) -> None:
    """Refuse --direct-ingress on a running cluster whose nodes lack its environment (the endpoint would never come up)."""

    @ray.remote(num_cpus=0)
    def node_env() -> dict[str, str | None]:
        return {key: os.environ.get(key) for key in direct_ingress_env(port)}

    got = ray.get(node_env.remote())
    missing = {k: v for k, v in direct_ingress_env(port).items() if got[k] != v}
    if missing:
        raise cli.JobFailed("--direct-ingress: the Ray cluster's nodes need this environment (set it where Ray starts): "
                            + " ".join(f"{k}={v}" for k, v in missing.items()) + f"; a node has {got}")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
    app: Annotated[app_config.AppConfig, tyro.conf.arg(name="")]
    """The application (checkpoint, config, batching, scaling, access)."""
    host: str = "0.0.0.0"
    """Address the Serve proxy (with --direct-ingress: the ingress replicas) binds."""
    port: int = 8000
    """Port of the websocket endpoint and /healthz (openpi's default)."""
    name: str = "recap-policy"
    """Serve application name."""
    ready_timeout_s: float = 900.0
    """How long to wait for the endpoint to answer a handshake."""


def wait_until_serving(uri: str, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    """Block until a websocket handshake at `uri` returns the metadata frame; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with ws_client.WebsocketClientPolicy(uri, api_key=api_key) as client:
                return client.get_server_metadata()
        except (ConnectionError, RuntimeError) as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{uri}: no working endpoint after {timeout_s:.0f} s: {err}") from err
            time.sleep(0.5)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing on `host` listens on now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check(config: Config) -> None:
    """What is checked before Ray starts (a few file lookups): the config is a policy's `_infer` config, and, when the
    replicas read this machine's files (a local Ray: no $RAY_ADDRESS), the checkpoint is a policy's with its norm
    stats and a tokenizer."""
    infer = policy.infer_config(config.app.config)
    if os.environ.get("RAY_ADDRESS"):  # a cluster's replicas may see other files than this driver
        return
    step = checkpoints.resolve(config.app.checkpoint)
    kind = (checkpoints.run_info(step) or {}).get("kind")
    if kind not in (None, "policy"):
        raise ValueError(f"--checkpoint {config.app.checkpoint}: a {kind} run's checkpoint ({step}); serve a policy "
                         "run (jobs.train_policy)")  # fmt: skip
    stats = checkpoints.norm_stats_file(step, infer.asset_id)
    if not stats.is_file():
        raise FileNotFoundError(f"{step}: no norm stats at {stats} (asset id {infer.asset_id!r} of config "
                                f"{config.app.config!r}); is this a checkpoint of that config?")  # fmt: skip
    if config.app.tokenizer is not None and not epath.Path(config.app.tokenizer).is_file():
        raise FileNotFoundError(f"--tokenizer {config.app.tokenizer}: no such file")
    if config.app.tokenizer is None and not checkpoints.tokenizer_file(step).is_file():
        raise FileNotFoundError(f"{step}: no tokenizer at {checkpoints.tokenizer_file(step)}; pass one (--tokenizer)")


def connect(config: Config) -> None:
    """Start a local Ray with `RAY_ENV` (and the direct-ingress environment), or join RAY_ADDRESS's cluster
    (`cli.connect_ray`)."""
    env = {**RAY_ENV, **direct_ingress_env(config.port)} if config.app.direct_ingress else RAY_ENV
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if config.app.direct_ingress:  # nothing in front of the replicas to deregister them: stop at once
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    cli.connect_ray()


def _check_gpus(per_replica: float, cluster_gpus: float, *, joined: bool) -> None:
    """An embedded Ray has all the GPUs it will ever have: too few is an error. A cluster that autoscales may
    have no GPU node up yet (KubeRay's GPU group at minReplicas 0): the replica waits for one, so only warn."""
    if per_replica <= 0 or cluster_gpus >= per_replica:
        return
    message = f"--num-gpus {per_replica} per model replica, but the Ray cluster has {cluster_gpus} GPUs"
    if not joined:
        raise ValueError(f"{message} (pass --num-gpus 0 to serve on CPU)")
    logger.warning("%s now: the model replica waits until the autoscaler adds a GPU node", message)


def start(config: Config) -> tuple[str, dict[str, Any]]:
    """Deploy the application and wait until it accepts connections; returns (ws URI, metadata). A user's
    checkpoint is checked first by `main` (`check`); the round and the benchmark serve ones they wrote."""
    if not ray.is_initialized():
        connect(config)
    elif config.app.direct_ingress:
        _check_direct_ingress_env(config.port)
    _check_gpus(config.app.num_gpus, ray.cluster_resources().get("GPU", 0), joined=bool(os.environ.get("RAY_ADDRESS")))
    app = dataclasses.replace(config.app, checkpoint=checkpoints.absolute_if_here(config.app.checkpoint),
                              tokenizer=checkpoints.absolute_if_here(config.app.tokenizer))  # fmt: skip
    # Direct ingress still starts Serve's proxies (the replicas' HTTP servers need an HTTP config): give them
    # another port, as only the replicas take connections on config.port.
    proxy_port = free_port(config.host) if config.app.direct_ingress else config.port
    serve.start(http_options={"host": config.host, "port": proxy_port})
    serve.run(serve_app.app(app), name=config.name, route_prefix="/")
    local = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
    uri = f"ws://{local}:{config.port}"
    metadata = wait_until_serving(uri, app.resolved_api_key(), config.ready_timeout_s)
    return uri, metadata


def main(config: Config) -> None:
    """Serve until interrupted (Ctrl-C, or SIGTERM as docker, systemd and Kubernetes stop a process), then
    shut Serve down."""
    check(config)  # before Ray starts
    connect(config)  # from here SIGTERM is a KeyboardInterrupt
    try:
        uri, metadata = start(config)
        logger.info("ready: %s (openpi websocket protocol), health at http://%s:%d/healthz; metadata %s",
                    uri, config.host, config.port, metadata)  # fmt: skip
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("shutting down")
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
