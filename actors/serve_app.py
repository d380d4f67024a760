"""The served policy as a Ray Serve application speaking openpi's websocket protocol.

    Ingress (CPU, FastAPI)  --handle (gRPC)-->  PolicyModel (GPU, continuous batching)  -> serve.policy.Policy

`Ingress` holds the websocket sessions: it checks the API key at the upgrade, sends the metadata
frame first, then for each binary frame decodes and validates the observation, awaits one action
chunk from the model deployment and sends it back with openpi's `server_timing`. A bad request (or a
frame sent before the previous answer: one request at a time) gets one text frame naming the problem,
then a close (1008); an internal failure the traceback, then 1011 (openpi's behaviour). A client gone
mid-inference cancels its request. Other sessions are untouched. `GET /healthz` answers "OK".
`PolicyModel` batches requests from every session and ingress replica into one model call
(continuous batching: what queued while a call ran is the next call). The handle uses Serve's gRPC
transport between replicas rather than a Ray actor call (less CPU and latency per request).
No `from __future__ import annotations` here: FastAPI must see the real `WebSocket` annotation on
the handler of the class Serve rebuilds, or it refuses every upgrade with HTTP 403.

Serve config: `import_path: actors.serve_app:build_app` with the `AppConfig` fields as `args`.
"""

import asyncio
import functools
import hmac
import logging
import time
import traceback
from typing import Any

import fastapi
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from recap_ray.serve import app_config, batcher, msgpack_numpy, policy, protocol

logger = logging.getLogger(__name__)

INVALID_REASON = "Invalid request. Error included in previous frame."
INTERNAL_REASON = "Internal server error. Traceback included in previous frame."  # openpi's reason

# The model replica's gRPC server refuses messages over 4 MiB by default; an observation pickles to
# about its frame's size, which the proxy caps at 16 MiB.
MODEL_ENV = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2 * protocol.PROXY_MAX_MESSAGE_BYTES)}

fastapi_app = fastapi.FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # no API pages past the key


@serve.deployment
class PolicyModel:
    """One policy on one accelerator; requests from all sessions are batched."""

    def __init__(self, config: app_config.AppConfig) -> None:
        self.policy = policy.Policy.load(config.checkpoint, config.config, tokenizer_path=config.tokenizer,
                                         options=config.policy_options)  # fmt: skip
        self.policy.warmup()  # compile before the replica reports ready
        self.batcher = batcher.ContinuousBatcher(functools.partial(self.policy.infer_batch, isolate_errors=True),
                                                 config.max_batch_size, config.batch_wait_timeout_s)  # fmt: skip

    def metadata(self) -> dict[str, Any]:
        """The metadata frame every session starts with (includes the observation limits)."""
        return self.policy.metadata

    async def infer(self, observation: dict[str, Any]) -> dict[str, Any]:
        """One observation -> its answer, computed in a batch with whatever else is queued
        (`batcher.ContinuousBatcher`, not `@serve.batch`: see there); a bad one raises to its caller only.
        `policy_timing.replica_ms`: the replica's whole time on it (waiting for its batch included)."""
        start = time.monotonic()
        answer = await self.batcher.submit(observation)
        answer["policy_timing"]["replica_ms"] = (time.monotonic() - start) * 1000
        return answer


@serve.deployment
@serve.ingress(fastapi_app)
class Ingress:
    """openpi's websocket server behaviour over Serve; inference goes to `PolicyModel` through a handle."""

    def __init__(self, model: DeploymentHandle, config: app_config.AppConfig) -> None:
        # By value over gRPC, not a Ray actor call: ~1.5 ms less CPU per request across ingress and
        # model, answers ~1 ms sooner (CPU, batch 1, 450 KB observations).
        self.model = model.options(_by_reference=False)
        self._api_key = config.resolved_api_key()
        self._metadata: dict[str, Any] | None = None

    async def _session_metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = await self.model.metadata.remote()
        return self._metadata

    def _authorized(self, ws: WebSocket) -> bool:
        """`Authorization: Api-Key <key>` as openpi-client sends it (the scheme in any case, as HTTP allows)."""
        if self._api_key is None:
            return True
        scheme, _, key = ws.headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "api-key" and hmac.compare_digest(key.strip().encode(), self._api_key.encode())

    @fastapi_app.get("/healthz")
    def healthz(self) -> PlainTextResponse:
        """openpi's health route."""
        return PlainTextResponse("OK\n")

    @fastapi_app.websocket("/")
    async def session(self, ws: WebSocket) -> None:
        """One robot connection: metadata, then observation -> action chunk until it disconnects."""
        if not self._authorized(ws):
            logger.warning("refused a connection from %s: missing or wrong API key", ws.client)
            await ws.close(code=1008, reason="missing or invalid API key")  # before accept: HTTP 403
            return
        await ws.accept()
        metadata = await self._session_metadata()
        spec = protocol.ObservationSpec(**metadata["observation"])
        await ws.send_bytes(msgpack_numpy.packb(metadata))
        prev_total_ms: float | None = None
        receiving: asyncio.Future | None = None  # the next frame, awaited while an inference runs
        inferring: asyncio.Future | None = None
        try:
            while True:
                start = time.monotonic()
                message = await (receiving or ws.receive())
                receiving = None
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")  # ASGI: either key may be absent or None
                obs = protocol.validate(protocol.decode(message.get("text") if data is None else data, spec), spec)
                infer_start = time.monotonic()
                # Listen while the model works: a client gone mid-inference cancels it, and a frame before the
                # answer ends the session (else every frame a client streams unanswered would queue here).
                response = self.model.infer.remote(obs)
                inferring, receiving = asyncio.ensure_future(response), asyncio.ensure_future(ws.receive())
                await asyncio.wait((inferring, receiving), return_when=asyncio.FIRST_COMPLETED)
                if receiving.done():
                    if receiving.result()["type"] == "websocket.disconnect":
                        return
                    raise protocol.InvalidRequest("got a message before the answer to the previous one; openpi's "
                                                  "protocol has one request at a time: wait for each answer")  # fmt: skip
                answer = inferring.result()
                answer["server_timing"] = {"infer_ms": (time.monotonic() - infer_start) * 1000}
                if prev_total_ms is not None:
                    answer["server_timing"]["prev_total_ms"] = prev_total_ms
                await ws.send_bytes(msgpack_numpy.packb(answer))
                prev_total_ms = (time.monotonic() - start) * 1000
        except WebSocketDisconnect:
            return
        except protocol.InvalidRequest as err:
            logger.info("invalid request from %s: %s", ws.client, err)
            await self._close_with(ws, f"InvalidRequest: {err}", 1008, INVALID_REASON)
        except Exception:
            logger.exception("session with %s failed", ws.client)
            await self._close_with(ws, traceback.format_exc(), 1011, INTERNAL_REASON)
        finally:
            if receiving is not None:
                receiving.cancel()
            if inferring is not None and not inferring.done():
                response.cancel()  # the client is gone or broke the protocol: free the model's batch slot

    @staticmethod
    async def _close_with(ws: WebSocket, text: str, code: int, reason: str) -> None:
        """Send `text` as a text frame, then close; the client may already be gone."""
        try:
            await ws.send_text(text)
            await ws.close(code=code, reason=reason)
        except (WebSocketDisconnect, RuntimeError):
            pass


def app(config: app_config.AppConfig) -> serve.Application:
    """The application: an autoscaled ingress bound to an autoscaled, batching model deployment."""
    model = PolicyModel.options(
        ray_actor_options={"num_gpus": config.num_gpus, "num_cpus": config.model_num_cpus,
                           "runtime_env": {"env_vars": MODEL_ENV}},
        autoscaling_config=config.model_autoscaling.as_dict(),
        max_ongoing_requests=config.model_max_ongoing_requests,
        logging_config={"enable_access_log": config.access_log},
    ).bind(config)
    # Direct ingress: each ingress replica listens on the node's one port of the range (jobs.serve.direct_ingress_env).
    placement = {"max_replicas_per_node": 1} if config.direct_ingress else {}
    ingress = Ingress.options(
        ray_actor_options={"num_cpus": config.ingress_num_cpus},
        autoscaling_config=config.ingress_autoscaling.as_dict(),
        max_ongoing_requests=config.max_sessions_per_ingress,
        **placement,
    )
    return ingress.bind(model, config)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder: `args` are `AppConfig` fields (nested dicts for the autoscaling ones)."""
    return app(app_config.AppConfig.from_args(args))
