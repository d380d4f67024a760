"""A synchronous websocket client policy speaking openpi's wire protocol (serving spec §1.2-1.7).

Connects, reads the server's metadata frame, then for each observation sends one binary msgpack
frame and blocks for the reply. A text frame from the server is its traceback: raised as
RuntimeError. A closed connection raises ConnectionError, a missing reply TimeoutError (and closes
the connection); `reconnect()` opens a new one, waiting for a server that is restarting. Usable
wherever a policy callable `obs -> {"actions": ...}` is expected.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync import client as ws_sync

from recap_ray.serve import msgpack_numpy

logger = logging.getLogger(__name__)

RECONNECT_PAUSE_S = 1.0  # between connection attempts of reconnect()
CHECKPOINT_KEYS = ("checkpoint", "checkpoint_saved_ns")  # what names the served policy (a retrained step differs)


def endpoint_uri(host: str, port: int | None = None) -> str:
    """openpi's URI rule: `host` verbatim if it starts with "ws", else ws://host; then :port if given."""
    uri = host if host.startswith("ws") else f"ws://{host}"
    return uri if port is None else f"{uri}:{port}"


class WebsocketClientPolicy:
    """One connection to an openpi-style policy server; one request in flight at a time.

    `reconnect()` replaces a broken connection (closed, or closed after a reply timeout) with a new one,
    trying for up to `reconnect_timeout_s` while the server is down or starting (a restart with a GPU
    model takes minutes: loading and compiling).
    """

    def __init__(self, host: str, port: int | None = None, api_key: str | None = None,
                 open_timeout_s: float = 10.0, reply_timeout_s: float | None = None,
                 reconnect_timeout_s: float = 120.0) -> None:
        self.uri = endpoint_uri(host, port)
        self.open_timeout_s = open_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._packer = msgpack_numpy.Packer()
        self._stack = contextlib.ExitStack()  # holds the current connection until close()
        self._ws: ws_sync.ClientConnection  # set by _connect
        self.metadata: dict = self._connect()
        logger.info("connected to %s, server metadata %s", self.uri, self.metadata)

    def _connect(self) -> dict:
        """Open the connection and read the server's metadata frame; returns the metadata."""
        try:
            self._ws = self._stack.enter_context(ws_sync.connect(self.uri, compression=None, max_size=None,
                                                                 additional_headers=self._headers,
                                                                 open_timeout=self.open_timeout_s))
        except (OSError, InvalidStatus, TimeoutError) as err:
            raise ConnectionError(f"cannot connect to policy server at {self.uri}: {err}") from err
        try:
            first = self._ws.recv(timeout=self.open_timeout_s)
        except (TimeoutError, ConnectionClosed) as err:
            self.close()
            raise ConnectionError(f"{self.uri}: no metadata frame from the server: {err}") from err
        if isinstance(first, str):
            self.close()
            raise RuntimeError(f"Error in inference server at {self.uri}:\n{first}")
        return msgpack_numpy.unpackb(first)

    def reconnect(self, timeout_s: float | None = None) -> None:
        """Close this connection and open a new one, trying again for up to `timeout_s` (None: the
        client's `reconnect_timeout_s`) while that fails; refuses a server that now names another checkpoint."""
        self.close()
        timeout_s = self.reconnect_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                metadata = self._connect()
                break
            except ConnectionError as err:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionError(f"{err} (still failing after {timeout_s:g} s)") from err
                logger.info("waiting for the server: %s", err)
                time.sleep(min(RECONNECT_PAUSE_S, left))
        served = {k: metadata.get(k) for k in CHECKPOINT_KEYS}
        if served != {k: self.metadata.get(k) for k in CHECKPOINT_KEYS}:
            self.close()
            raise RuntimeError(f"{self.uri}: the server now serves checkpoint {metadata.get('checkpoint')!r} "
                               f"(saved at {metadata.get('checkpoint_saved_ns')} ns), not {self.metadata.get('checkpoint')!r} "
                               f"(saved at {self.metadata.get('checkpoint_saved_ns')} ns)")  # fmt: skip
        self.metadata = metadata
        logger.info("reconnected to %s", self.uri)

    def get_server_metadata(self) -> dict:
        """The metadata dict the server sent on connect (openpi-client's name)."""
        return self.metadata

    def infer(self, observation: dict) -> dict[str, Any]:
        """Send one observation, return the server's reply dict."""
        try:
            self._ws.send(self._packer.pack(observation))
            reply = self._ws.recv(timeout=self.reply_timeout_s)
        except ConnectionClosed as err:
            raise ConnectionError(f"{self.uri}: connection closed: {err}") from err
        except TimeoutError as err:
            self.close()  # the late reply would be read as the next request's answer
            raise TimeoutError(f"{self.uri}: no reply in {self.reply_timeout_s} s; connection closed") from err
        if isinstance(reply, str):
            raise RuntimeError(f"Error in inference server:\n{reply}")
        out = msgpack_numpy.unpackb(reply)
        if not isinstance(out, dict):
            raise ValueError(f"{self.uri}: expected a dict reply, got {type(out).__name__}")
        return out

    __call__ = infer

    def close(self) -> None:
        """Close the connection (again: a no-op)."""
        self._stack.close()

    def __enter__(self) -> WebsocketClientPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
