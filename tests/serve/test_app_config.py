"""Application options: the Serve config file, strict builder args, and the application graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from actors import serve_app
from recap_ray.serve import app_config

SERVE_YAML = Path(__file__).resolve().parents[2] / "cluster" / "serve.yaml"


def test_cluster_serve_yaml_is_a_valid_deploy_config():
    config = yaml.safe_load(SERVE_YAML.read_text())
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.import_path == "actors.serve_app:build_app"
    assert schema.http_options.request_timeout_s is None  # a deadline would cut live websocket sessions
    app = app_config.AppConfig.from_args(application.args)
    assert app.config.endswith("_infer") and app.api_key_env == "RECAP_SERVE_API_KEY"
    assert app.model_autoscaling.max_replicas == 4 and app.ingress_autoscaling.target_ongoing_requests == 100
    assert app.model_max_ongoing_requests == 2 * app.max_batch_size


def test_build_app_binds_an_autoscaled_ingress_to_an_autoscaled_model(tmp_path):
    application = serve_app.build_app({"checkpoint": str(tmp_path), "config": "pi06_tiny_infer", "num_gpus": 0.5,
                                       "max_batch_size": 4, "model_autoscaling": {"min_replicas": 1, "max_replicas": 3},
                                       "ingress_autoscaling": {"max_replicas": 2, "target_ongoing_requests": 50}})  # fmt: skip
    ingress = application._bound_deployment
    model = ingress.init_args[0]._bound_deployment  # the handle the ingress calls
    assert (ingress.name, model.name) == ("Ingress", "PolicyModel")
    assert model.ray_actor_options["num_gpus"] == 0.5 and "num_gpus" not in ingress.ray_actor_options
    assert model.max_ongoing_requests == 8 and ingress.max_ongoing_requests == 200
    assert model._deployment_config.autoscaling_config.max_replicas == 3
    assert ingress._deployment_config.autoscaling_config.target_ongoing_requests == 50
    # one log line per session on the ingress; none per inference on the model unless asked for
    assert ingress.logging_config is None and model.logging_config["enable_access_log"] is False
    logged = serve_app.build_app({"checkpoint": str(tmp_path), "config": "pi06_tiny_infer", "access_log": True})
    assert logged._bound_deployment.init_args[0]._bound_deployment.logging_config["enable_access_log"] is True


def test_bad_args_are_refused():
    with pytest.raises(ValueError, match=r"unknown keys \['max_batch'\]"):
        app_config.AppConfig.from_args({"checkpoint": "c", "config": "x_infer", "max_batch": 4})
    with pytest.raises(ValueError, match=r"model_autoscaling has unknown keys \['max'\]"):
        app_config.AppConfig.from_args({"checkpoint": "c", "config": "x_infer", "model_autoscaling": {"max": 2}})
    with pytest.raises(ValueError, match="dropped by the serve proxy"):
        app_config.AppConfig(checkpoint="c", config="x_infer", max_message_bytes=17 * 1024 * 1024)
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        app_config.Autoscaling(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="RECAP_TEST_UNSET_KEY"):
        app_config.AppConfig(checkpoint="c", config="x_infer", api_key_env="RECAP_TEST_UNSET_KEY").resolved_api_key()


def test_api_key_from_a_secret_file_with_a_newline(monkeypatch):
    # `kubectl create secret --from-file` keeps the file's newline; HTTP trims header values, so a key
    # with surrounding whitespace could never match and every robot would get HTTP 403
    monkeypatch.setenv("RECAP_TEST_KEY", "sekrit\n")
    assert app_config.AppConfig(checkpoint="c", config="x_infer", api_key_env="RECAP_TEST_KEY").resolved_api_key() == "sekrit"
    assert app_config.AppConfig(checkpoint="c", config="x_infer", api_key=" sekrit ").resolved_api_key() == "sekrit"
    monkeypatch.setenv("RECAP_TEST_KEY", " \n")
    with pytest.raises(ValueError, match="RECAP_TEST_KEY"):
        app_config.AppConfig(checkpoint="c", config="x_infer", api_key_env="RECAP_TEST_KEY").resolved_api_key()
