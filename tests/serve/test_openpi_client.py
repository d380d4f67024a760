"""The real openpi-client 0.1.2 (its own venv, numpy<2) against our endpoint, as a subprocess."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recap_ray.sim import env as env_lib
from tests.interop import peers
from tests.serve.conftest import API_KEY

pytestmark = pytest.mark.interop


def test_openpi_client_gets_positive_action_chunks(served, local_policy, tmp_path):
    environment = env_lib.HandoverEnv()
    environment.reset(5)
    obs = environment.observation()
    flat = {f"images/{k}": v for k, v in obs["images"].items()}
    np.savez(tmp_path / "obs.npz", state=obs["state"], prompt=np.array(obs["prompt"]), **flat)
    out = tmp_path / "out.json"
    peers.run("openpi-client", "127.0.0.1", str(served["port"]), str(tmp_path / "obs.npz"), str(out), API_KEY,
              tmp=tmp_path, script=peers.OPENPI_CLIENT_SCRIPT)  # fmt: skip
    seen = json.loads(out.read_text())
    assert seen["numpy"].startswith("1.")  # really the numpy<2 client
    assert seen["metadata"]["adv_ind"] == "positive" and seen["metadata"]["action_horizon"] == 10
    expected = local_policy.infer({**obs, "adv_ind": "positive"})["actions"]
    for key in ("no_adv_ind", "negative", "positive", "after_bad"):
        reply = seen[key]
        assert reply["dtype"] == "<f4" and set(reply["policy_timing"]) >= {"infer_ms"}
        np.testing.assert_allclose(np.array(reply["actions"], np.float32), expected, rtol=1e-6, atol=1e-6)
    assert "prev_total_ms" in seen["negative"]["server_timing"]
    assert seen["bad_request"].startswith("Error in inference server:\nInvalidRequest: 'state': expected shape (14,)")
    assert seen["without_key"] is not None and "403" in seen["without_key"]
