"""gs://BUCKET on gcp-storage-emulator (in memory, loopback), reached by gcsfs (epath) and TensorStore
(orbax's arrays) in this process and in any process started with `client_env`."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import fsspec
import pytest

BUCKET = "recap-runs"


def _with_generation(handler: Callable[..., Any]) -> Callable[..., Any]:
    """The emulator's object GET plus what GCS always does and TensorStore's reads rely on: the
    `x-goog-generation` header, and 304 for `ifGenerationNotMatch` of the current generation."""
    from gcp_storage_emulator.exceptions import NotFound

    def get(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            return handler(request, response, storage, *args, **kwargs)
        if request.query.get("ifGenerationNotMatch", [None])[0] == obj["generation"]:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
        handler(request, response, storage, *args, **kwargs)
        response["x-goog-generation"], response["x-goog-metageneration"] = obj["generation"], obj["metageneration"]
        return None

    return get


def client_env(url: str) -> dict[str, str]:
    """Environment pointing a new process's gcsfs and TensorStore at the emulator at `url`, no credential search."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs
        "FSSPEC_GS_TOKEN": "anon",  # gcsfs: anonymous (read by fsspec at import)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: the plain JSON-API class (read at import)
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: a fixed token
    }


@contextlib.contextmanager
def serve() -> Iterator[dict[str, str]]:
    """Run the emulator with BUCKET; yields `client_env` for other processes (Ray workers).

    Two gaps of the stand-ins are closed while it runs: the emulator's object reads get GCS's
    generation headers (`_with_generation`), and gs:// maps to gcsfs's plain JSON-API class in this
    process (its default class first asks the Storage Control API, over gRPC, whether the bucket is zonal).
    """
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects
    from gcsfs.core import GCSFileSystem

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    env = client_env(f"http://127.0.0.1:{port}")
    protocols = {name: fsspec.get_filesystem_class(name) for name in ("gs", "gcs")}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for _, handlers in emulator.HANDLERS:
                if handlers.get("GET") in (objects.get, objects.download):
                    mp.setitem(handlers, "GET", _with_generation(handlers["GET"]))
            for name in protocols:
                fsspec.register_implementation(name, GCSFileSystem, clobber=True)
            for key, value in env.items():
                mp.setenv(key, value)
            mp.setitem(fsspec.config.conf.setdefault("gs", {}), "token", "anon")  # fsspec read the environment at import
            yield env
    finally:
        for name, cls in protocols.items():
            fsspec.register_implementation(name, cls, clobber=True)
        server.stop()
