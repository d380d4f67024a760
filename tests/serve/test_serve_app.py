"""The Serve application over real websockets on 127.0.0.1: answers, batching, bad inputs, API key."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync import client as ws_sync

from recap_ray.serve import msgpack_numpy, protocol, ws_client
from recap_ray.sim import env as env_lib
from tests.serve.conftest import API_KEY, MAX_MESSAGE_BYTES


def _observation(seed: int) -> dict:
    environment = env_lib.HandoverEnv()
    environment.reset(seed)
    return environment.observation()


@contextlib.contextmanager
def _raw(uri: str) -> Iterator[ws_sync.ClientConnection]:
    """A bare websocket past the metadata frame, to send what openpi-client never would."""
    headers = {"Authorization": f"Api-Key {API_KEY}"}
    with ws_sync.connect(uri, compression=None, max_size=None, additional_headers=headers) as conn:
        assert isinstance(conn.recv(timeout=30), bytes)
        yield conn


def test_health_route_and_metadata(served, local_policy):
    with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/healthz", timeout=30) as response:
        assert response.status == 200 and response.read() == b"OK\n"
    assert served["metadata"] == local_policy.metadata
    assert served["metadata"]["adv_ind"] == "positive" and served["metadata"]["action_horizon"] == 10


def test_any_adv_ind_gets_the_positive_answer(served, local_policy):
    obs = _observation(0)
    expected = local_policy.infer({**obs, "adv_ind": "positive"})["actions"]
    with ws_client.WebsocketClientPolicy(served["uri"], api_key=API_KEY) as client:
        replies = [client.infer(o) for o in (obs, {**obs, "adv_ind": "negative"}, {**obs, "adv_ind": "positive"})]
    for reply in replies:
        assert set(reply) == {"actions", "policy_timing", "server_timing"}  # openpi's keys, nothing of ours
        assert reply["actions"].shape == (10, 14) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"], expected, rtol=1e-6, atol=1e-6)
        timing = reply["policy_timing"]
        assert timing["infer_ms"] > 0 and timing["prepare_ms"] > 0
        # nested intervals, each timed by its own process: the ingress's wait on the handle holds the model
        # replica's time on the request, which holds the input transforms and the model call
        assert reply["server_timing"]["infer_ms"] >= timing["replica_ms"] >= timing["prepare_ms"] + timing["infer_ms"]
    assert "prev_total_ms" not in replies[0]["server_timing"]  # openpi adds it from the second reply on
    assert replies[1]["server_timing"]["prev_total_ms"] > 0


def test_concurrent_clients_are_batched_and_answered_like_single_calls(served, local_policy):
    observations = [_observation(seed) for seed in range(8)]
    expected = [local_policy.infer(o)["actions"] for o in observations]
    start = threading.Barrier(len(observations))
    answers: dict[int, list[dict]] = {}
    errors: list[BaseException] = []

    def robot(i: int) -> None:
        try:
            with ws_client.WebsocketClientPolicy(served["uri"], api_key=API_KEY, reply_timeout_s=120) as client:
                start.wait(timeout=60)
                answers[i] = [client.infer(observations[i]) for _ in range(2)]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(len(observations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and sorted(answers) == list(range(len(observations)))
    for i, replies in answers.items():
        for reply in replies:
            np.testing.assert_allclose(reply["actions"], expected[i], rtol=1e-6, atol=1e-6)
    sizes = [r["policy_timing"]["batch_size"] for replies in answers.values() for r in replies]
    assert max(sizes) > 1 and max(sizes) <= 4


def test_an_observation_over_grpc_default_message_size_is_answered(served, local_policy):
    # ingress -> model goes over Serve's gRPC transport, whose default message limit is 4 MiB
    obs = _observation(2)
    big = np.random.default_rng(2).integers(0, 256, (3, 1280, 1280), np.uint8)
    obs["images"] = {**obs["images"], "cam_high": big}
    assert 4 << 20 < len(msgpack_numpy.packb(obs)) < MAX_MESSAGE_BYTES
    expected = local_policy.infer(obs)["actions"]
    with ws_client.WebsocketClientPolicy(served["uri"], api_key=API_KEY, reply_timeout_s=120) as client:
        np.testing.assert_allclose(client.infer(obs)["actions"], expected, rtol=1e-6, atol=1e-6)


BAD_FRAMES = [
    (b"\xc1\x00\x01", "malformed msgpack"),
    ("hello", "text frame"),
    (msgpack.packb([1, 2, 3]), "must be a msgpack map"),
    (msgpack_numpy.packb({**_observation(0), "observation/state": np.zeros(14)}), r"unknown keys \['observation/state'\]"),
    (msgpack_numpy.packb({"images": _observation(0)["images"]}), r"missing keys \['state'\]"),
    (msgpack_numpy.packb({**_observation(0), "images": {"cam_high": np.zeros((3, 48), np.uint8)}}),
     r"images\['cam_high'\]: expected shape"),
    (msgpack_numpy.packb({**_observation(0), "images": {"cam_high": np.zeros((3, 48, 64), np.int32)}}),
     "expected dtype uint8 .* got int32"),
    (msgpack_numpy.packb({**_observation(0), "state": np.zeros((2, 7), np.float32)}), r"'state': expected shape \(14,\)"),
    (msgpack_numpy.packb({**_observation(0), "images": {"cam_high": np.zeros((3, 1500, 1500), np.uint8)}}),
     f"exceeds the limit of {MAX_MESSAGE_BYTES} bytes"),
]  # fmt: skip


def test_bad_inputs_get_a_clear_error_while_others_are_served(served, local_policy):
    obs = _observation(1)
    expected = local_policy.infer(obs)["actions"]
    with ws_client.WebsocketClientPolicy(served["uri"], api_key=API_KEY) as good:
        np.testing.assert_allclose(good.infer(obs)["actions"], expected, rtol=1e-6, atol=1e-6)
        for frame, message in BAD_FRAMES:
            with _raw(served["uri"]) as conn:
                conn.send(frame)
                reply = conn.recv(timeout=60)
                assert isinstance(reply, str) and reply.startswith("InvalidRequest: ")
                assert re.search(message, reply), (message, reply)
                with pytest.raises(ConnectionClosed) as closed:
                    conn.recv(timeout=60)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        # over the proxy's 16 MiB: uvicorn closes with 1009 before our code sees the message (the
        # client may see the close frame, or a reset if it was still sending)
        with _raw(served["uri"]) as conn:
            with pytest.raises((ConnectionClosed, ConnectionResetError)) as closed:
                conn.send(b"\x00" * (protocol.PROXY_MAX_MESSAGE_BYTES + 1024))
                conn.recv(timeout=60)
            rcvd = getattr(closed.value, "rcvd", None)
            assert rcvd is None or rcvd.code == 1009
        # openpi-client's view of a bad request: RuntimeError with our message
        with ws_client.WebsocketClientPolicy(served["uri"], api_key=API_KEY) as client:
            with pytest.raises(RuntimeError, match=r"Error in inference server:\nInvalidRequest: 'prompt'"):
                client.infer({**obs, "prompt": 7})
        for _ in range(2):  # the first session was never disturbed
            np.testing.assert_allclose(good.infer(obs)["actions"], expected, rtol=1e-6, atol=1e-6)


def test_a_client_that_sends_without_reading_is_stopped(served, local_policy):
    # openpi's protocol has one request in flight per connection; a client that streams observations
    # without waiting for answers must not make the server queue them all (memory grows with every frame)
    obs = _observation(3)
    expected = local_policy.infer(obs)["actions"]
    frame = msgpack_numpy.packb(obs)
    with ws_client.WebsocketClientPolicy(served["uri"], api_key=API_KEY) as good:
        with _raw(served["uri"]) as conn:
            with contextlib.suppress(ConnectionClosed, ConnectionResetError, BrokenPipeError):
                for _ in range(300):
                    conn.send(frame)
            replies = []
            with contextlib.suppress(ConnectionClosed):
                while len(replies) < 300:
                    replies.append(conn.recv(timeout=60))
        texts = [r for r in replies if isinstance(r, str)]
        assert len(replies) < 300 and texts, f"{len(replies)} answers, no error"
        assert texts[-1].startswith("InvalidRequest: ") and "one request at a time" in texts[-1], texts[-1]
        np.testing.assert_allclose(good.infer(obs)["actions"], expected, rtol=1e-6, atol=1e-6)


def test_api_key_is_required(served):
    for key in (None, "wrong"):
        with pytest.raises(ConnectionError, match="HTTP 403"):
            ws_client.WebsocketClientPolicy(served["uri"], api_key=key)
    with ws_client.WebsocketClientPolicy(served["uri"], api_key=API_KEY) as client:
        assert client.get_server_metadata()["adv_ind"] == "positive"
    for header in (f"api-key {API_KEY}", f"API-KEY  {API_KEY} "):  # HTTP auth schemes are case-insensitive
        with ws_sync.connect(served["uri"], additional_headers={"Authorization": header}) as conn:
            assert isinstance(conn.recv(timeout=30), bytes)
    for header in (f"Bearer {API_KEY}", f"Api-Key {API_KEY}x", f"Api-Key{API_KEY}", API_KEY):
        with pytest.raises(Exception, match="HTTP 403"):
            ws_sync.connect(served["uri"], additional_headers={"Authorization": header}, open_timeout=30)
    for page in ("docs", "redoc", "openapi.json"):  # FastAPI's pages would describe the server to anyone
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/{page}", timeout=30)


def test_direct_ingress_refused_on_a_cluster_without_its_environment(ray_local, policy_run):
    from jobs import serve as serve_job
    from tests.serve.conftest import app_config_for

    app = dataclasses.replace(app_config_for(policy_run), direct_ingress=True)
    port = serve_job.free_port()
    with pytest.raises(RuntimeError, match=f"RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT={port}"):
        serve_job.start(serve_job.Config(app=app, host="127.0.0.1", port=port))
