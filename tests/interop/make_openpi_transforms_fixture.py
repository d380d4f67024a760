"""Writes tests/fixtures/openpi_transforms/: openpi's (and pistar's) own transform and norm-stats outputs.

Runs in a Python 3.11 venv with openpi's pins, importing the upstream sources given as arguments (nothing
upstream is copied here); tests/test_openpi_transforms_parity.py replays the recorded inputs through recap_ray.
How the checked-in fixture was made (CPU; resolved versions in meta.json; PIL's bilinear resize is what both
sides use, and this venv had the same Pillow 13.0.0 as recap_ray's):

    git -C <mirror>/Physical-Intelligence+openpi/repo archive 15a9616a00943ada6c20a0f158e3adb39df2ccac | tar -x -C /tmp/s13/t/openpi
    git -C <mirror>/ybpy+pistar/repo archive 35fe827df1d34ac3fd5459009eb4250f05441e60 | tar -x -C /tmp/s13/t/pistar
    python3.11 -m venv /tmp/s13/venvs/openpi_t
    /tmp/s13/venvs/openpi_t/bin/pip install jax==0.5.3 jaxlib==0.5.3 flax==0.10.2 "numpy<2" jaxtyping==0.2.36 \
        beartype==0.19.0 numpydantic pydantic pillow sentencepiece dm-tree einops augmax ml_collections==1.0.0 \
        orbax-checkpoint==0.11.13 chex==0.1.90 tqdm-loggable tyro filelock fsspec msgpack websockets
    nice /tmp/s13/venvs/openpi_t/bin/python tests/interop/make_openpi_transforms_fixture.py \
        --openpi /tmp/s13/t/openpi --pistar /tmp/s13/t/pistar --out tests/fixtures/openpi_transforms

Substitutions: `upstream_stand_ins` (beside this script) for torch / transformers / safetensors, which openpi's
training/config.py imports for names only; `openpi.shared.download.maybe_download` returns a sentencepiece model
trained here (fixture's tokenizer.model; PaliGemma's is behind gs://); the norm stats reach openpi's own config
code through a temporary assets folder with a norm_stats.json written by openpi's `normalize.save`.

Recorded (fixture.npz, keys joined with "/", strings as numpy str arrays):
- serve/<case>/in, out: observations as robots send them (CHW uint8 or [0, 1] float images; 14-dim float32 or
  float64 state; with and without actions, prompt, a camera; two states a hair below a state-token bin edge,
  see openpi_transform_cases.edge_states) and openpi's model input after the serving pipeline of policy_config.create_trained_policy
  for `pi05_aloha` with adapt_to_pi=False (pi06_yam's setting); images stored CHW (_planar); uint8 -> [-1, 1]
  (Observation.from_dict) is left to the test.
- pistar/<case>: the same with pistar's TokenizePrompt (advantage clause, max_token_len 203, no dropout as the
  `_infer` configs). pistar's AlohaInputs (openpi's) drops `adv_ind`, so its own pipeline raises "Adv_ind is
  required." (recorded); RECAP's passes it through, so a pass-through is inserted after AlohaInputs.
- train/yam: a LeRobot-shaped YAM sample through openpi's RepackTransform (pi06_yam mapping) and the training
  pipeline; outputs/<case>: the output pipeline (Unnormalize, AbsoluteActions, AlohaOutputs) on the model-input
  state and a random (50, 32) model chunk; trossen/<case>, trossen_outputs/<case>: openpi's stock pi05_aloha
  (adapt_to_pi=True), inputs and outputs.
- norm_stats.json (used by every pipeline), zscore/norm_stats.json (q01/q99 null), stats_json/norm_stats.json
  (RunningStats' batched result), all written by openpi; stats/<name>: arrays fed to RunningStats in one batch
  and in batches whose range grows (re-binning), with the mean/std/q01/q99 it returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np

import upstream_stand_ins  # beside this script
import openpi_transform_cases as robot_inputs  # beside this script
from openpi_transform_cases import HORIZON

YAM_PROMPT = "Use one arm to grasp the papercup and hand it over to the other arm"
YAM_REPACK = {
    "images": {"cam_high": "observation.images.head_camera", "cam_left_wrist": "observation.images.left_wrist_camera",
               "cam_right_wrist": "observation.images.right_wrist_camera"},
    "state": "observation.state", "actions": "action", "adv_ind": "adv_ind",
}  # fmt: skip
CORPUS = (
    "Task: pick up the cube and hand it over, State: 0 1 2 3 4 5 6 7 8 9 10 127 128 255 -1;\nAction: "
    "Advantage: positive negative none. Use one arm to grasp the papercup and hand it over to the other arm. "
) * 30


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = np.asarray(v)
    return out


def _planar(out):
    """Model-input images stored channel-planar (CHW: compresses 3-4x better); the test transposes back."""
    return {**out, "image": {k: np.moveaxis(np.asarray(v), -1, 0) for k, v in out["image"].items()}}


def _purge_openpi():
    for name in list(sys.modules):
        if name == "openpi" or name.startswith("openpi."):
            del sys.modules[name]


def _import_openpi(src: pathlib.Path, tokenizer_model: pathlib.Path):
    _purge_openpi()
    upstream_stand_ins.install()
    paths = [str(src / "src"), str(src / "packages/openpi-client/src")]
    sys.path[:0] = paths
    import openpi.shared.download as download

    def local_only(url, **kwargs):
        if url == "gs://big_vision/paligemma_tokenizer.model":
            return tokenizer_model
        return download.__wrapped_maybe_download__(url, **kwargs)

    if not hasattr(download, "__wrapped_maybe_download__"):
        download.__wrapped_maybe_download__ = download.maybe_download
    download.maybe_download = local_only
    import openpi.models.pi0_config as pi0_config
    import openpi.shared.normalize as normalize
    import openpi.training.config as config
    import openpi.transforms as transforms

    for p in paths:
        sys.path.remove(p)
    return config, pi0_config, transforms, normalize


def _run_serving(transforms, cfg, norm_stats):
    data_config = cfg.data.create(cfg.assets_dirs, cfg.model)
    inputs = transforms.compose([
        transforms.InjectDefaultPrompt(None),  # serve_policy's --default-prompt, unset
        *data_config.data_transforms.inputs,
        transforms.Normalize(norm_stats, use_quantiles=data_config.use_quantile_norm),
        *data_config.model_transforms.inputs,
    ])
    outputs = transforms.compose([
        *data_config.model_transforms.outputs,
        transforms.Unnormalize(norm_stats, use_quantiles=data_config.use_quantile_norm),
        *data_config.data_transforms.outputs,
    ])
    return data_config, inputs, outputs


def _copy(tree):
    return {k: _copy(v) if isinstance(v, dict) else np.array(v, copy=True) if isinstance(v, np.ndarray) else v
            for k, v in tree.items()}  # fmt: skip


def _openpi_part(args, tok, rng, assets, fixture, meta):
    config, pi0_config, transforms, normalize = _import_openpi(args.openpi, tok)
    norm_stats = normalize.load(assets / "trossen")  # what the config code reads
    base = config.get_config("pi05_aloha")
    data = dataclasses.replace(
        base.data, adapt_to_pi=False, default_prompt=YAM_PROMPT,
        assets=config.AssetsConfig(assets_dir=str(assets), asset_id="trossen"),
    )  # fmt: skip
    cfg = dataclasses.replace(base, data=data)
    data_config, inputs, outputs = _run_serving(transforms, cfg, norm_stats)
    assert data_config.use_quantile_norm and data_config.norm_stats is not None
    meta["openpi"] = {
        "config": "pi05_aloha (adapt_to_pi=False, default_prompt=YAM prompt, assets from norm_stats.json)",
        "max_token_len": cfg.model.max_token_len, "action_dim": cfg.model.action_dim,
        "discrete_state_input": cfg.model.discrete_state_input, "default_prompt": YAM_PROMPT,
        "input_transforms": [type(t).__name__ for t in inputs.transforms],
        "output_transforms": [type(t).__name__ for t in outputs.transforms],
    }  # fmt: skip
    model_out = {}
    for name, obs in robot_inputs.serve_cases(rng).items():
        fixture.update(_flatten(obs, f"serve/{name}/in"))
        out = inputs(_copy(obs))
        fixture.update(_flatten(_planar(out), f"serve/{name}/out"))
        model_out[name] = out
    x64, x32 = robot_inputs.edge_states(rng, np.asarray(norm_stats["state"].q01), np.asarray(norm_stats["state"].q99))
    tiny = {"cam_high": robot_inputs.image(rng, (3, 6, 8), "u8"), "cam_left_wrist": robot_inputs.image(rng, (3, 6, 8), "u8")}
    for name, st in (("state_bin_edges_f64", x64), ("state_bin_edges_f32", x32)):
        obs = {"images": tiny, "state": st, "prompt": "bin edges"}
        fixture.update(_flatten(obs, f"serve/{name}/in"))
        out = inputs(_copy(obs))
        fixture.update(_flatten(_planar(out), f"serve/{name}/out"))
    # Output pipeline, as Policy.infer: state is the model input (jnp.asarray -> float32), actions the model's.
    for name, out in model_out.items():
        sample = {"state": np.asarray(out["state"], np.float32),
                  "actions": rng.uniform(-1.3, 1.3, (HORIZON, cfg.model.action_dim)).astype(np.float32)}  # fmt: skip
        fixture.update(_flatten(sample, f"outputs/{name}/in"))
        fixture.update(_flatten(outputs(_copy(sample)), f"outputs/{name}/out"))

    # Training: LeRobot-shaped YAM sample -> openpi RepackTransform (pi06_yam) -> data loader order.
    train_inputs = transforms.compose([
        transforms.RepackTransform({k: v for k, v in YAM_REPACK.items() if k != "adv_ind"}),
        *data_config.data_transforms.inputs,
        transforms.Normalize(norm_stats, use_quantiles=True),
        *data_config.model_transforms.inputs,
    ])
    sample = {
        "observation.images.head_camera": robot_inputs.image(rng, (3, 24, 32), "f32"),
        "observation.images.left_wrist_camera": robot_inputs.image(rng, (3, 12, 16), "f32"),
        "observation.images.right_wrist_camera": robot_inputs.image(rng, (3, 12, 16), "f32"),
        "observation.state": rng.uniform(-1.5, 1.5, 14).astype(np.float32),
        "action": rng.uniform(-1.5, 1.5, (HORIZON, 14)).astype(np.float32),
        "episode_index": np.int64(3),
    }
    fixture.update(_flatten(sample, "train/yam/in"))
    fixture.update(_flatten(_planar(train_inputs(_copy(sample))), "train/yam/out"))

    # Norm stats: openpi's RunningStats as compute_norm_stats uses it (update per batch, get_statistics).
    n = 4000
    cols = [
        rng.normal(0.3, 0.2, n),  # plain
        rng.standard_t(1.5, n) * 0.05 + 1.0,  # heavy tails
        np.full(n, 0.7),  # constant
        np.where(rng.random(n) < 0.8, 0.0, 1.0) + rng.normal(0, 1e-3, n),  # gripper: bimodal
        np.round(rng.normal(0, 3, n)),  # discrete values
        rng.normal(100.0, 0.01, n),  # large offset, small spread (float32 cancellation)
    ]
    arr = np.stack(cols, axis=1).astype(np.float32)
    fixture["stats/array"] = arr
    order = np.argsort(np.abs(arr[:, 1]))  # growing range: every batch re-bins the heavy-tail column
    for name, batches in {"one_batch": [arr], "batched": np.array_split(arr[order], 25)}.items():
        rs = normalize.RunningStats()
        for b in batches:
            rs.update(np.asarray(b))
        s = rs.get_statistics()
        fixture[f"stats/{name}/order"] = np.arange(n) if name == "one_batch" else order
        fixture[f"stats/{name}/batch_rows"] = np.array([len(b) for b in batches])
        for f in ("mean", "std", "q01", "q99"):
            fixture[f"stats/{name}/{f}"] = np.asarray(getattr(s, f))
        if name == "batched":
            normalize.save(args.out / "stats_json", {"state": s})


def _trossen_part(args, tok, assets, fixture, meta):
    """openpi's stock pi05_aloha (adapt_to_pi=True, Trossen arms): Aloha-range states (joints in radians,
    grippers in [0, 1]), training actions, and the output pipeline on model chunks."""
    config, _, transforms, normalize = _import_openpi(args.openpi, tok)
    norm_stats = normalize.load(assets / "trossen")
    base = config.get_config("pi05_aloha")
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, assets=config.AssetsConfig(str(assets), "trossen")))
    assert cfg.data.adapt_to_pi
    _, inputs, outputs = _run_serving(transforms, cfg, norm_stats)
    rng = np.random.default_rng(13)
    meta["trossen"] = {"config": "pi05_aloha (stock: adapt_to_pi=True)", "max_token_len": cfg.model.max_token_len}

    def aloha(shape):
        x = rng.uniform(-1.5, 1.5, shape)
        x[..., [6, 13]] = rng.uniform(-0.05, 1.05, x[..., [6, 13]].shape)  # grippers, a little past the range
        return x.astype(np.float32)

    cams = {"cam_high": robot_inputs.image(rng, (3, 48, 64), "u8"), "cam_left_wrist": robot_inputs.image(rng, (3, 24, 32), "u8")}
    cases = {"serve": {"images": cams, "state": aloha(14), "prompt": "fold the towel"},
             "train": {"images": cams, "state": aloha(14), "actions": aloha((HORIZON, 14)), "prompt": "fold"}}  # fmt: skip
    for name, obs in cases.items():
        fixture.update(_flatten(obs, f"trossen/{name}/in"))
        out = inputs(_copy(obs))
        fixture.update(_flatten(_planar(out), f"trossen/{name}/out"))
        sample = {"state": np.asarray(out["state"], np.float32),
                  "actions": rng.uniform(-1.3, 1.3, (HORIZON, cfg.model.action_dim)).astype(np.float32)}  # fmt: skip
        fixture.update(_flatten(sample, f"trossen_outputs/{name}/in"))
        fixture.update(_flatten(outputs(_copy(sample)), f"trossen_outputs/{name}/out"))


def _pistar_part(args, tok, rng, assets, fixture, meta):
    config, pi0_config, transforms, normalize = _import_openpi(args.pistar, tok)
    import openpi.policies.aloha_policy as aloha_policy

    norm_stats = normalize.load(assets / "trossen")
    model = pi0_config.Pi0Config(pi05=True, pistar=True)
    data = config.LeRobotAlohaDataConfig(
        adapt_to_pi=False, default_prompt=YAM_PROMPT,
        assets=config.AssetsConfig(assets_dir=str(assets), asset_id="trossen"),
    )  # fmt: skip
    data_config = data.create(pathlib.Path(assets), model)
    model_tf = config.ModelTransformFactory(default_prompt=YAM_PROMPT, adv_ind_dropout=False)(model)
    plain = transforms.compose([
        *data_config.data_transforms.inputs,
        transforms.Normalize(norm_stats, use_quantiles=data_config.use_quantile_norm),
        *model_tf.inputs,
    ])
    obs0 = next(iter(robot_inputs.serve_cases(np.random.default_rng(7), tiny=True).values()))
    try:
        plain({**_copy(obs0), "adv_ind": "positive"})
        meta["pistar_aloha_inputs_drops_adv_ind"] = "no error"
    except ValueError as err:
        meta["pistar_aloha_inputs_drops_adv_ind"] = str(err)

    class KeepAdvInd:
        """Stand-in for RECAP's AlohaInputs, which passes adv_ind through (openpi's drops it)."""

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, data):
            adv = data.get("adv_ind")
            out = self.inner(data)
            return out if adv is None else {**out, "adv_ind": adv}

    inputs = transforms.compose([
        *(KeepAdvInd(t) if isinstance(t, aloha_policy.AlohaInputs) else t for t in data_config.data_transforms.inputs),
        transforms.Normalize(norm_stats, use_quantiles=data_config.use_quantile_norm),
        *model_tf.inputs,
    ])
    meta["pistar"] = {"max_token_len": model.max_token_len, "adv_ind_dropout": False,
                      "input_transforms": [type(t).__name__ for t in inputs.transforms]}  # fmt: skip
    cases = robot_inputs.serve_cases(np.random.default_rng(11), tiny=True)
    for (name, obs), adv in zip(cases.items(), ("positive", "negative", "none", "positive")):
        obs = {**obs, "adv_ind": adv}
        fixture.update(_flatten(obs, f"pistar/{name}/in"))
        out = inputs(_copy(obs))
        fixture.update(_flatten({k: out[k] for k in ("state", "tokenized_prompt", "tokenized_prompt_mask")},
                                f"pistar/{name}/out"))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--openpi", type=pathlib.Path, required=True, help="openpi source tree (15a9616)")
    ap.add_argument("--pistar", type=pathlib.Path, required=True, help="pistar source tree (35fe827)")
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    import PIL
    import sentencepiece as spm

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "corpus.txt").write_text(CORPUS)
        spm.SentencePieceTrainer.train(
            input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "tok"), vocab_size=300, model_type="bpe",
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, character_coverage=1.0, num_threads=1,
            minloglevel=2, normalization_rule_name="identity",  # no 240 kB NFKC table
        )  # fmt: skip
        tok = args.out / "tokenizer.model"
        shutil.copy(tmp / "tok.model", tok)
        rng = np.random.default_rng(0)
        assets = tmp / "assets"
        fixture: dict[str, np.ndarray] = {}
        meta: dict = {}
        _, _, _, normalize = _import_openpi(args.openpi, tok)
        stats = {k: normalize.NormStats(**{f: np.asarray(v) for f, v in s.items()}) for k, s in robot_inputs.norm_stats(rng).items()}
        normalize.save(assets / "trossen", stats)
        shutil.copy(assets / "trossen/norm_stats.json", args.out / "norm_stats.json")
        zscore = {k: normalize.NormStats(mean=v.mean, std=v.std) for k, v in stats.items()}  # pi0: q01/q99 null
        normalize.save(args.out / "zscore", zscore)
        _openpi_part(args, tok, rng, assets, fixture, meta)
        _pistar_part(args, tok, rng, assets, fixture, meta)
        _trossen_part(args, tok, assets, fixture, meta)
    import jax

    meta["versions"] = {"python": sys.version.split()[0], "numpy": np.__version__, "jax": jax.__version__,
                        "pillow": PIL.__version__, "sentencepiece": spm.__version__,
                        "openpi": "15a9616a00943ada6c20a0f158e3adb39df2ccac",
                        "pistar": "35fe827df1d34ac3fd5459009eb4250f05441e60"}  # fmt: skip
    np.savez_compressed(args.out / "fixture.npz", **fixture)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
