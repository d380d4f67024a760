"""Parity of recap_ray's policy transforms and norm stats with openpi's (and pistar's) own code.

tests/fixtures/openpi_transforms/ was written by tests/interop/make_openpi_transforms_fixture.py (its docstring
says how) running openpi 15a9616 / pistar 35fe827 themselves; here only recorded arrays are replayed,
no upstream code is needed.

Tolerances. Images, masks, tokens: exact (both sides resize with PIL bilinear and paste at the same
offset). Normalised state/actions: 1e-6 absolute + 1e-6 relative (both pad to float32 at the end;
measured max 2.3e-7 state, 9.5e-7 on actions up to ~30).
Un-normalised actions: 1e-6 of the largest action (measured 6.5e-8). Norm stats: q01/q99 are openpi histogram readings: it returns the LEFT edge of the
5000-bin histogram bin where the cumulative count reaches q*N (normalize.py `_compute_quantiles`),
recap_ray interpolates inside that bin, so with one batch ours - openpi's lies in [0, 1 bin width].
When the range grows across batches openpi re-bins by dropping each old bin's count at its left
edge, recap_ray at its centre: the bins drift apart by up to half a (narrower, older) bin per re-bin;
the bound used is (1 + 1.5 * re-bins) widths of the final bin (measured: up to 6 bins after 24 re-bins,
for the N(100, 0.01) column, where openpi's batched result moved 6-7 bins away from its one-batch one).
Mean/std: openpi accumulates E[x] and E[x^2] in the batch dtype (float32 in compute_norm_stats), summing
rows sequentially (relative error up to N * eps32), and takes sqrt(E[x^2] - E[x]^2), which cancels
catastrophically for a column with a large offset and a small spread (std 0 for N(100, 0.01)) or a
constant column (std 1.3e-3 for 0.7); recap_ray merges moments in float64 (Chan) and is checked against
numpy's exact float64 values. Against openpi: mean within N * eps32 * max|x|, std within its error bound
where that bound is under 1%. Only q01/q99 reach a pi0.5 model (quantile normalisation).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from recap_ray import transforms
from recap_ray.data import norm_stats
from recap_ray.models import pi05_config, siglip, tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "openpi_transforms"
META = json.loads((FIXTURE / "meta.json").read_text())


def _tree(prefix: str) -> dict:
    """Nested dict of the fixture entries under `prefix/` (keys split on '/')."""
    with np.load(FIXTURE / "fixture.npz") as z:
        flat = {k[len(prefix) + 1 :]: z[k] for k in z.files if k.startswith(prefix + "/")}
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value.item() if value.dtype.kind == "U" else value
    return out


def _cases(section: str) -> list[str]:
    with np.load(FIXTURE / "fixture.npz") as z:
        return sorted({k.split("/")[1] for k in z.files if k.startswith(section + "/")})


@pytest.fixture(scope="module")
def stats() -> dict[str, norm_stats.NormStats]:
    return norm_stats.load(FIXTURE / "norm_stats.json")


def _model(pistar: bool) -> pi05_config.Pi05Config:
    meta = META["pistar" if pistar else "openpi"]
    return pi05_config.Pi05Config(pistar=pistar, max_token_len=meta["max_token_len"], discrete_state_input=True)


def _pipelines(stats, pistar: bool = False, repack: bool = False, adapt_to_pi: bool = False) -> tuple[transforms.Compose, transforms.Compose]:  # fmt: skip
    """(pipeline up to uint8 model images, full pipeline incl. ModelInputs)."""
    model = _model(pistar)
    tok = tokenizer.PromptTokenizer(FIXTURE / "tokenizer.model", model.max_token_len)
    prompt = None if adapt_to_pi else META["openpi"]["default_prompt"]  # openpi's stock pi05_aloha has none
    full = transforms.policy_inputs(model, stats, tok, default_prompt=prompt, repack=repack, adapt_to_pi=adapt_to_pi)
    assert isinstance(full.transforms[-1], transforms.ModelInputs)
    return transforms.Compose(full.transforms[:-1]), full


def _check_model_input(ours: dict, ours_full: dict, theirs: dict, case: str) -> None:
    for cam, chw in theirs["image"].items():
        expected = np.moveaxis(chw, 0, -1)  # stored channel-planar
        np.testing.assert_array_equal(ours["images"][cam], expected, err_msg=f"{case}: {cam}")
        # the model input stays uint8, as openpi's transforms leave it; the model maps it as openpi's
        # Observation.from_dict (model.py): uint8 -> float32 / 255 * 2 - 1
        np.testing.assert_array_equal(ours_full["images"][cam], expected, err_msg=f"{case}: {cam} as model input")
        want = expected.astype(np.float32) / 255.0 * 2.0 - 1.0
        np.testing.assert_array_equal(np.asarray(jax.jit(siglip.pixels)(ours_full["images"][cam])), want, err_msg=f"{case}: {cam}")
    assert list(ours["images"]) == list(theirs["image"]), case  # prefix order
    assert {k: bool(v) for k, v in ours["image_masks"].items()} == {k: bool(v) for k, v in theirs["image_mask"].items()}
    np.testing.assert_allclose(ours["state"], theirs["state"], rtol=1e-6, atol=1e-6, err_msg=f"{case}: state")
    assert ours["state"].shape == (32,)
    np.testing.assert_array_equal(ours["tokenized_prompt"], theirs["tokenized_prompt"], err_msg=f"{case}: tokens")
    np.testing.assert_array_equal(ours["tokenized_prompt_mask"], theirs["tokenized_prompt_mask"])
    if "actions" in theirs:
        np.testing.assert_allclose(ours["actions"], theirs["actions"], rtol=1e-6, atol=1e-6, err_msg=f"{case}: actions")
    else:
        assert "actions" not in ours


@pytest.mark.parametrize("case", _cases("serve"))
def test_serving_inputs_match_openpi(stats, case):
    data = _tree(f"serve/{case}")
    upto, full = _pipelines(stats)
    _check_model_input(upto(dict(data["in"])), full(dict(data["in"])), data["out"], case)


def test_hwc_images_give_openpi_chw_result(stats):
    """openpi's AlohaInputs takes CHW only; recap_ray also takes HWC, with the same result."""
    data = _tree("serve/chw_u8_4x3")
    hwc = {**data["in"], "images": {k: np.moveaxis(v, 0, -1) for k, v in data["in"]["images"].items()}}
    upto, full = _pipelines(stats)
    _check_model_input(upto(hwc), full(hwc), data["out"], "hwc")


def test_training_inputs_match_openpi(stats):
    """LeRobot-shaped YAM sample: openpi RepackTransform (pi06_yam mapping) + data loader order."""
    data = _tree("train/yam")
    upto, full = _pipelines(stats, repack=True)
    _check_model_input(upto(dict(data["in"])), full(dict(data["in"])), data["out"], "train")


@pytest.mark.parametrize("case", _cases("pistar"))
def test_pistar_advantage_prompt_matches(stats, case):
    data = _tree(f"pistar/{case}")
    upto, _ = _pipelines(stats, pistar=True)
    ours = upto(dict(data["in"]))
    assert data["in"]["adv_ind"] in ("positive", "negative", "none")
    np.testing.assert_array_equal(ours["tokenized_prompt"], data["out"]["tokenized_prompt"], err_msg=case)
    np.testing.assert_array_equal(ours["tokenized_prompt_mask"], data["out"]["tokenized_prompt_mask"])
    np.testing.assert_allclose(ours["state"], data["out"]["state"], rtol=1e-6, atol=1e-6)
    assert META["pistar_aloha_inputs_drops_adv_ind"] == "Adv_ind is required."  # pistar's own AlohaInputs


@pytest.mark.parametrize("case", _cases("outputs"))
def test_outputs_match_openpi(stats, case):
    data = _tree(f"outputs/{case}")
    ours = transforms.policy_outputs(stats)(dict(data["in"]))["actions"]
    theirs = data["out"]["actions"]
    assert ours.shape == theirs.shape == (50, 14)
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * scale, err_msg=case)


@pytest.mark.parametrize("case", _cases("trossen"))
def test_trossen_adapt_to_pi_matches_openpi(stats, case):
    """openpi's stock pi05_aloha (adapt_to_pi=True): joint signs and gripper conversions in and out."""
    data = _tree(f"trossen/{case}")
    upto, full = _pipelines(stats, adapt_to_pi=True)
    _check_model_input(upto(dict(data["in"])), full(dict(data["in"])), data["out"], case)
    sample = _tree(f"trossen_outputs/{case}")
    ours = transforms.policy_outputs(stats, adapt_to_pi=True)(dict(sample["in"]))["actions"]
    theirs = sample["out"]["actions"]
    assert ours.shape == theirs.shape == (50, 14)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * np.abs(theirs).max(), err_msg=case)


def test_norm_stats_json_read_as_openpi_writes_it(stats):
    raw = json.loads((FIXTURE / "norm_stats.json").read_text())["norm_stats"]
    assert set(stats) == set(raw) == {"state", "actions"}
    for key, s in stats.items():
        for field in ("mean", "std", "q01", "q99"):
            np.testing.assert_array_equal(getattr(s, field), np.asarray(raw[key][field], np.float64))
    # what we write has openpi's shape: {"norm_stats": {key: {mean, std, q01, q99}}}, fields lists of floats
    ours = json.loads(norm_stats.dumps(stats))["norm_stats"]
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in raw.items()}
    assert ours == raw


def test_zscore_norm_stats_refused():
    """openpi's pi0 (z-score) stats have q01/q99 null; openpi's quantile Normalize refuses them, so do we."""
    assert json.loads((FIXTURE / "zscore" / "norm_stats.json").read_text())["norm_stats"]["state"]["q01"] is None
    with pytest.raises(ValueError, match="q01"):
        norm_stats.load(FIXTURE / "zscore" / "norm_stats.json")


@pytest.mark.parametrize("mode", ["one_batch", "batched"])
def test_running_stats_match_openpi(mode):
    data = _tree(f"stats/{mode}")
    arr = _tree("stats")["array"]
    running = norm_stats.RunningStats()
    rows = arr[data["order"]]
    start = 0
    for n in data["batch_rows"]:
        running.update(rows[start : start + n])
        start += n
    ours = running.result()
    bin_width = (arr.max(0).astype(np.float64) - arr.min(0)) / norm_stats.NUM_BINS
    ends = np.cumsum(data["batch_rows"])
    lo, hi = np.minimum.accumulate([rows[:e].min(0) for e in ends]), np.maximum.accumulate([rows[:e].max(0) for e in ends])
    rebins = ((lo[1:] < lo[:-1]) | (hi[1:] > hi[:-1])).sum(0)  # batches that widened the column's range
    for q in ("q01", "q99"):
        diff = getattr(ours, q) - data[q]
        if mode == "one_batch":  # same bin, we interpolate inside it
            ok = (diff >= -1e-6 * (1 + np.abs(data[q]))) & (diff <= bin_width + 1e-6 * (1 + np.abs(data[q])))
        else:  # each re-bin moves mass by < 1 bin (openpi) and < 1/2 bin (ours) of a range <= the final one
            ok = np.abs(diff) <= (1 + 1.5 * rebins) * bin_width + 1e-6
        assert ok.all(), f"{mode} {q}: diff {diff} / bin width {bin_width} = {diff / np.maximum(bin_width, 1e-12)}"
    exact_mean, exact_std = arr.astype(np.float64).mean(0), arr.astype(np.float64).std(0)
    np.testing.assert_allclose(ours.mean, exact_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.std, exact_std, rtol=1e-9, atol=1e-12)
    # openpi sums float32 rows one after another (np.mean over axis 0 is not pairwise): relative error up to
    # N * eps32 on E[x] and E[x^2]; the std inherits it divided by the conditioning std^2 / E[x^2].
    n, eps = len(arr), float(np.finfo(np.float32).eps)
    mag = np.abs(arr).max(0)
    mean_err = np.abs(ours.mean - data["mean"])
    assert (mean_err <= n * eps * mag).all(), f"mean diff {mean_err} > {n * eps * mag}"
    std_bound = n * eps * (exact_mean**2 + exact_std**2) / np.maximum(exact_std**2, 1e-300)
    usable = std_bound < 1e-2
    assert usable.tolist() == [True, True, False, True, True, False]  # not: constant, N(100, 0.01)
    std_err = np.abs(ours.std - data["std"])[usable] / exact_std[usable]
    assert (std_err <= std_bound[usable]).all(), f"std rel diff {std_err} > {std_bound[usable]}"


def test_openpi_running_stats_json_loads():
    loaded = norm_stats.load(FIXTURE / "stats_json" / "norm_stats.json")["state"]
    data = _tree("stats/batched")
    for field in ("mean", "std", "q01", "q99"):
        np.testing.assert_allclose(getattr(loaded, field), data[field], rtol=1e-7, atol=0)
