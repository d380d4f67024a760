"""Runs inside the openpi-client 0.1.2 virtual environment (numpy<2, not ours): talks to a policy server.

    python openpi_client_peer.py HOST PORT OBS.npz OUT.json [API_KEY]

OBS.npz holds one observation flattened ("images/cam_high", "state", "prompt"). The peer connects
with openpi's own `WebsocketClientPolicy`, reads the metadata, asks for an action chunk three
times (no adv_ind, adv_ind "negative", adv_ind "positive"), sends one bad observation on a second
connection, tries to connect without the API key, and writes what it saw as JSON.
"""

import json
import sys

import numpy as np
from openpi_client import websocket_client_policy


def _observation(path):
    data = np.load(path)
    obs = {"images": {}}
    for key in data.files:
        if key.startswith("images/"):
            obs["images"][key.split("/", 1)[1]] = data[key]
    obs["state"] = data["state"]
    obs["prompt"] = str(data["prompt"])
    return obs


def _reply(policy, obs):
    out = policy.infer(obs)
    return {"actions": out["actions"].tolist(), "dtype": out["actions"].dtype.str,
            "policy_timing": out["policy_timing"], "server_timing": out["server_timing"]}


def main(host, port, obs_path, out_path, api_key=None):
    obs = _observation(obs_path)
    result = {"numpy": np.__version__}
    policy = websocket_client_policy.WebsocketClientPolicy(host, int(port), api_key=api_key)
    result["metadata"] = policy.get_server_metadata()
    result["no_adv_ind"] = _reply(policy, obs)
    result["negative"] = _reply(policy, dict(obs, adv_ind="negative"))
    result["positive"] = _reply(policy, dict(obs, adv_ind="positive"))
    bad = websocket_client_policy.WebsocketClientPolicy(host, int(port), api_key=api_key)
    try:
        bad.infer(dict(obs, state=obs["state"][:5]))
        result["bad_request"] = None
    except RuntimeError as err:
        result["bad_request"] = str(err)
    result["after_bad"] = _reply(policy, obs)  # the first session keeps working
    try:
        websocket_client_policy.WebsocketClientPolicy(host, int(port))
        result["without_key"] = None
    except Exception as err:  # noqa: BLE001 - report whatever the client raises
        result["without_key"] = f"{type(err).__name__}: {err}"
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
