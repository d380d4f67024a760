"""PaliGemma prompt tokenizer with pi0.5's discrete state and pistar's advantage clause.

The prompt, exactly as pistar builds it (before sentencepiece, BOS prepended, no EOS):
  `Task: {text}, State: {s0 s1 ...}, Advantage: {adv_ind};\\nAction: `   (clause kept)
  `Task: {text}, State: {s0 s1 ...};\\nAction: `                        (no adv_ind, or dropped)
Text is stripped with "_" and newlines turned into spaces; the state (quantile-normalised, not yet
padded) is discretised into 256 bins over [-1, 1] (values below -1 give -1: no clipping). The
value `none` has no special meaning: it is written literally (`Advantage: none`).
Whether the clause is required or dropped is decided by `transforms.TokenizePrompt`.
"""

from __future__ import annotations

import logging

import numpy as np
import sentencepiece
from etils import epath

logger = logging.getLogger(__name__)

_STATE_EDGES = np.linspace(-1, 1, 256 + 1)[:-1]


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Bin index of each value: floor((x + 1) * 128) on [-1, 1), 255 at the top, -1 below -1."""
    return np.digitize(np.asarray(state), bins=_STATE_EDGES) - 1


def clean_text(text: str) -> str:
    """Strip, and turn underscores and newlines into spaces (case kept)."""
    return text.strip().replace("_", " ").replace("\n", " ")


def format_prompt(text: str, state: np.ndarray | None, adv_ind: str | None = None) -> str:
    """The pi0.5 / pistar prompt string; with no state, the cleaned text alone (pi0 form, adv_ind ignored)."""
    cleaned = clean_text(text)
    if state is None:
        return cleaned
    state_str = " ".join(str(int(s)) for s in discretize_state(state))
    clause = f", Advantage: {adv_ind}" if adv_ind is not None else ""
    return f"Task: {cleaned}, State: {state_str}{clause};\nAction: "


class PromptTokenizer:
    """Sentencepiece (PaliGemma's `paligemma_tokenizer.model`, or any model file) with fixed-length output."""

    def __init__(self, model_path: epath.PathLike, max_len: int):
        """`model_path`: a local file or one in a bucket (a checkpoint's assets in gs://...)."""
        path = epath.Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"sentencepiece model {str(path)!r} not found; give a local copy of PaliGemma's "
                "paligemma_tokenizer.model (nothing is downloaded)"
            )
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, prompt: str, state: np.ndarray | None, adv_ind: str | None = None) -> list[int]:
        """Token ids of the formatted prompt, BOS first; the pi0 form (no state) ends with the '\\n' tokens."""
        text = format_prompt(prompt, state, adv_ind)
        tokens = self._sp.encode(text, add_bos=True)
        if state is None:
            tokens = tokens + self._sp.encode("\n")
        return tokens

    def tokenize(
        self, prompt: str, state: np.ndarray | None, adv_ind: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32 (max_len,), mask bool (max_len,)): right-padded with 0, truncated with a warning."""
        tokens = self.encode(prompt, state, adv_ind)
        n = len(tokens)
        if n > self.max_len:
            logger.warning("prompt has %d tokens, more than max_len %d: truncated", n, self.max_len)
            tokens, n = tokens[: self.max_len], self.max_len
        out = np.zeros(self.max_len, np.int32)
        out[:n] = tokens
        return out, np.arange(self.max_len) < n

    def decode(self, tokens: np.ndarray) -> str:
        """Text of token ids (padding 0 dropped)."""
        return self._sp.decode([int(t) for t in tokens if t != 0])
