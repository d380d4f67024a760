"""A fake openpi-style policy server on 127.0.0.1 for the collect and evaluate jobs."""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync import server as ws_server

from recap_ray.serve import msgpack_numpy

Reply = Callable[[int, dict], "dict | None"]


def hold_still(n: int, request: dict) -> dict:
    """A deterministic policy: four actions nudging every joint from the observed state."""
    return {"actions": np.repeat(request["state"][None], 4, axis=0) + 0.05}


class PolicyServer:
    """Sends `metadata`, then answers request n (counted over all connections) with `reply(n, request)`;
    a None answer closes the connection instead (1011, as a crashed replica). With no `reply` it never
    answers (a hung replica) until stopped."""

    def __init__(self, reply: Reply | None, metadata: dict) -> None:
        self.reply, self.metadata = reply, metadata
        self.requests: list[dict] = []
        self.connections = 0
        self.release = threading.Event()
        self._server = ws_server.serve(self._handle, "127.0.0.1", 0, compression=None, max_size=None)
        self.uri = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, connection: ws_server.ServerConnection) -> None:
        self.connections += 1
        connection.send(msgpack_numpy.packb(self.metadata))
        try:
            for message in connection:
                request = msgpack_numpy.unpackb(message)
                self.requests.append(request)
                if self.reply is None:
                    self.release.wait()
                    return
                answer = self.reply(len(self.requests) - 1, request)
                if answer is None:
                    connection.close(1011, "replica died")
                    return
                connection.send(msgpack_numpy.packb(answer))
        except ConnectionClosed:  # the client gave up on a late reply
            return

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._thread.join(timeout=10)


@pytest.fixture
def policy_server() -> Callable[..., PolicyServer]:
    """Start a `PolicyServer(reply, metadata)`; stopped at the end of the test."""
    servers: list[PolicyServer] = []

    def start(reply: Reply | None = hold_still, metadata: dict | None = None) -> PolicyServer:
        servers.append(PolicyServer(reply, {"checkpoint": "/runs/a/checkpoints/7"} if metadata is None else metadata))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
