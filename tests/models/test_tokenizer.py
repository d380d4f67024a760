"""Prompt tokens for positive / negative / none / dropped advantage against hand-built strings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import sentencepiece

from recap_ray import transforms
from recap_ray.models import tokenizer

STATE = np.array([-1.0, -0.5, 0.0, 0.99, 0.9921875, 1.0, -1.5])
STATE_STR = "0 64 128 254 255 255 -1"  # floor((x + 1) * 128), top bin 255, no clipping below -1


class FixedRng:
    """Stands in for np.random.Generator: `random()` returns the given values in turn."""

    def __init__(self, *values: float):
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


@pytest.fixture(scope="module")
def tok(sentencepiece_model):
    return tokenizer.PromptTokenizer(sentencepiece_model, max_len=80)


@pytest.fixture(scope="module")
def sp(sentencepiece_model):
    return sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))


def _expected(sp, text: str, max_len: int = 80) -> tuple[np.ndarray, np.ndarray]:
    ids = [2] + sp.encode(text)  # BOS id 2, no EOS
    assert len(ids) <= max_len
    return np.array(ids + [0] * (max_len - len(ids))), np.array([True] * len(ids) + [False] * (max_len - len(ids)))


def test_discretize_state():
    np.testing.assert_array_equal(tokenizer.discretize_state(STATE), [0, 64, 128, 254, 255, 255, -1])


@pytest.mark.parametrize("adv", ["positive", "negative", "none"])
def test_prompt_with_advantage(tok, sp, adv):
    sample = {"prompt": " pick_up the red\nblock ", "state": STATE, "adv_ind": adv}
    out = transforms.TokenizePrompt(tok, adv_ind_required=True)(sample)
    text = f"Task: pick up the red block, State: {STATE_STR}, Advantage: {adv};\nAction: "
    tokens, mask = _expected(sp, text)
    np.testing.assert_array_equal(out["tokenized_prompt"], tokens)
    np.testing.assert_array_equal(out["tokenized_prompt_mask"], mask)
    assert out["tokenized_prompt"].dtype == np.int32 and "adv_ind" not in out and "prompt" not in out


def test_dropped_clause_and_infer_never_drops(tok, sp):
    sample = {"prompt": "fold the towel", "state": STATE, "adv_ind": np.array("positive")}
    dropped = transforms.TokenizePrompt(tok, dropout_prob=0.3, rng=FixedRng(0.29))(sample)
    kept = transforms.TokenizePrompt(tok, dropout_prob=0.3, rng=FixedRng(0.31))(sample)
    infer = transforms.TokenizePrompt(tok, dropout_prob=0.0, rng=FixedRng(0.0))(sample)
    without, _ = _expected(sp, f"Task: fold the towel, State: {STATE_STR};\nAction: ")
    with_clause, _ = _expected(sp, f"Task: fold the towel, State: {STATE_STR}, Advantage: positive;\nAction: ")
    np.testing.assert_array_equal(dropped["tokenized_prompt"], without)
    np.testing.assert_array_equal(kept["tokenized_prompt"], with_clause)
    np.testing.assert_array_equal(infer["tokenized_prompt"], with_clause)


def test_dropout_rate_is_pistars(tok):
    t = transforms.TokenizePrompt(tok, dropout_prob=0.3, rng=np.random.default_rng(0))
    with_clause = len(tok.encode("x", STATE, "positive"))
    lengths = [t({"prompt": "x", "state": STATE, "adv_ind": "positive"})["tokenized_prompt_mask"].sum()
               for _ in range(600)]  # fmt: skip
    assert 0.64 < np.mean(np.array(lengths) == with_clause) < 0.76


def test_missing_adv_ind_raises_and_optional_when_not_required(tok, sp):
    with pytest.raises(ValueError, match="adv_ind is required"):
        transforms.TokenizePrompt(tok)({"prompt": "x", "state": STATE})
    with pytest.raises(ValueError, match="adv_ind is required"):
        transforms.TokenizePrompt(tok)({"prompt": "x", "state": STATE, "adv_ind": None})
    out = transforms.TokenizePrompt(tok, adv_ind_required=False)({"prompt": "x", "state": STATE})
    np.testing.assert_array_equal(out["tokenized_prompt"], _expected(sp, f"Task: x, State: {STATE_STR};\nAction: ")[0])


def test_truncation_and_pi0_form(sentencepiece_model, sp, caplog):
    short = tokenizer.PromptTokenizer(sentencepiece_model, max_len=6)
    with caplog.at_level(logging.WARNING):
        tokens, mask = short.tokenize("pick up the red block", STATE, "positive")
    assert mask.all() and "truncated" in caplog.text
    np.testing.assert_array_equal(tokens, ([2] + sp.encode("Task: pick up the red block"))[:6])
    tokens, mask = tokenizer.PromptTokenizer(sentencepiece_model, max_len=20).tokenize("fold_the towel", None)
    want = [2] + sp.encode("fold the towel") + sp.encode("\n")
    np.testing.assert_array_equal(tokens[: len(want)], want)
    assert mask.sum() == len(want)


def test_demo_tokenizer_interrupted_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    """A training run killed half-way must not leave a `.model` that the next call would take as trained."""
    from recap_ray import demo_assets

    real_train = sentencepiece.SentencePieceTrainer.train

    def dies_half_way(**kwargs):
        with open(kwargs["model_prefix"] + ".model", "wb") as f:
            f.write(b"\x0a\x03half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        demo_assets.tokenizer(tmp_path / "tok")
    assert not (tmp_path / "tok.model").exists()
    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", real_train)
    model = demo_assets.tokenizer(tmp_path / "tok")
    assert sentencepiece.SentencePieceProcessor(model_file=str(model)).piece_to_id("<unk>") == 3
