"""The websocket client policy against a small openpi-style server on 127.0.0.1."""

import threading
import time
import traceback

import numpy as np
import pytest
from websockets.sync import server as ws_server

from recap_ray.serve import msgpack_numpy, ws_client
from recap_ray.sim import env as env_lib
from recap_ray.sim import evaluation, policies, scripted, world


class _Server:
    """openpi's server behaviour: metadata first, then one reply per request; traceback text + 1011 on error."""

    def __init__(self, policy, metadata=None, port=0):
        self.policy = policy
        self.metadata = metadata or {}
        self.headers = []
        self.requests = []
        self._server = ws_server.serve(self._handle, "127.0.0.1", port, compression=None, max_size=None)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handle(self, connection):
        self.headers.append(connection.request.headers.get("Authorization"))
        connection.send(msgpack_numpy.packb(self.metadata))
        for message in connection:
            try:
                request = msgpack_numpy.unpackb(message)
                self.requests.append(request)
                connection.send(msgpack_numpy.packb(self.policy(request)))
            except Exception:
                connection.send(traceback.format_exc())
                connection.close(1011, "Internal server error. Traceback included in previous frame.")
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._thread.join(timeout=10)


def test_metadata_request_and_reply():
    def echo(request):
        return {"actions": np.repeat(request["state"][None], 3, axis=0), "policy_timing": {"infer_ms": 1.0}}

    environment = env_lib.HandoverEnv()
    environment.reset(0)
    obs = environment.observation()
    with _Server(echo, {"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}) as server:
        with ws_client.WebsocketClientPolicy(f"ws://127.0.0.1:{server.port}", api_key="sekrit") as client:
            assert client.get_server_metadata() == {"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}
            reply = client(obs)
    assert server.headers == ["Api-Key sekrit"]
    request = server.requests[0]
    assert request["prompt"] == obs["prompt"]
    for key, image in obs["images"].items():
        assert request["images"][key].dtype == np.uint8
        np.testing.assert_array_equal(request["images"][key], image)
    assert reply["actions"].shape == (3, 14) and reply["actions"].dtype == np.float32
    np.testing.assert_array_equal(reply["actions"][0], obs["state"])
    assert reply["policy_timing"] == {"infer_ms": 1.0}


def test_closed_loop_evaluation_over_the_socket():
    environment = env_lib.HandoverEnv(world.TaskConfig())
    expert = policies.Scripted(environment, scripted.Expert(environment.config))  # served from this process
    config = evaluation.EvalConfig(episodes=3, video_episodes=0)
    with _Server(expert) as server:
        with ws_client.WebsocketClientPolicy("127.0.0.1", server.port) as client:
            result, _ = evaluation.evaluate(client, environment, config)
    assert result.successes == 3
    assert len(server.requests) == sum(e.policy_calls for e in result.episodes)


def test_server_error_raises_with_traceback():
    def broken(request):
        raise KeyError("no such camera")

    with _Server(broken) as server:
        client = ws_client.WebsocketClientPolicy(f"ws://127.0.0.1:{server.port}")
        with pytest.raises(RuntimeError, match="no such camera"):
            client({"state": np.zeros(14, np.float32)})
        with pytest.raises(ConnectionError, match="1011"):
            client({"state": np.zeros(14, np.float32)})
        client.close()


def test_a_late_reply_never_answers_the_next_request():
    def slow_first(request):
        if request["i"] == 0:
            time.sleep(0.5)
        return {"i": request["i"]}

    with _Server(slow_first) as server:
        with ws_client.WebsocketClientPolicy(f"ws://127.0.0.1:{server.port}", reply_timeout_s=0.2) as client:
            with pytest.raises(TimeoutError):
                client({"i": 0})
            time.sleep(0.5)  # the late reply to request 0 has arrived by now
            try:
                reply = client({"i": 1})
            except ConnectionError:
                return
            assert reply == {"i": 1}


def test_refused_connection_is_a_clear_error():
    with _Server(lambda r: r) as server:
        port = server.port
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        ws_client.WebsocketClientPolicy(f"ws://127.0.0.1:{port}", open_timeout_s=2)


def test_endpoint_uri_rule():
    assert ws_client.endpoint_uri("localhost", 8000) == "ws://localhost:8000"
    assert ws_client.endpoint_uri("wss://host.example/path") == "wss://host.example/path"


def test_reconnect_after_a_dropped_connection():
    with _Server(lambda r: r, {"checkpoint": "/ckpt/7"}) as server:
        with ws_client.WebsocketClientPolicy(f"ws://127.0.0.1:{server.port}") as client:
            server.policy = lambda r: 1 / 0  # the server fails: traceback, then 1011
            with pytest.raises(RuntimeError, match="ZeroDivisionError"):
                client({"i": 0})
            with pytest.raises(ConnectionError, match="1011"):
                client({"i": 1})
            server.policy = lambda r: r
            client.reconnect()
            assert client({"i": 2}) == {"i": 2} and client.metadata == {"checkpoint": "/ckpt/7"}
            server.metadata = {"checkpoint": "/ckpt/8"}  # restarted with another checkpoint
            with pytest.raises(RuntimeError, match=r"'/ckpt/8' \(saved at None ns\), not '/ckpt/7'"):
                client.reconnect()
            server.metadata = {"checkpoint": "/ckpt/7", "checkpoint_saved_ns": 5}  # the same step, retrained
            with pytest.raises(RuntimeError, match=r"'/ckpt/7' \(saved at 5 ns\), not '/ckpt/7' \(saved at None ns\)"):
                client.reconnect()
    assert len(server.headers) == 4


def test_reconnect_waits_for_a_restarting_server():
    # a restart (new checkpoint rollout, replica replaced) refuses connections for a while: jobs.evaluate
    # and jobs.collect call reconnect() once per retry, so it must wait for the server, not fail at once
    servers = [_Server(lambda r: r, {"checkpoint": "/ckpt/7"}).__enter__()]
    port = servers[0].port
    client = ws_client.WebsocketClientPolicy(f"ws://127.0.0.1:{port}", reconnect_timeout_s=30)
    assert client({"i": 0}) == {"i": 0}
    servers[0].__exit__()

    def restart():
        time.sleep(1.5)
        servers.append(_Server(lambda r: r, {"checkpoint": "/ckpt/7"}, port=port).__enter__())

    threading.Thread(target=restart).start()
    try:
        with pytest.raises(ConnectionError):
            client({"i": 1})
        start = time.monotonic()
        client.reconnect()
        assert time.monotonic() - start >= 1 and client({"i": 2}) == {"i": 2}
        client.close()
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.* after 1 s"):  # down for good: gives up
            servers[-1].__exit__()
            client.reconnect(timeout_s=1)
    finally:
        client.close()
        servers[-1].__exit__()
