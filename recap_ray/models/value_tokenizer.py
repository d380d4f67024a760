"""The value model's prompt tokenizer (pistar's GemmaValueTokenizer) on a Gemma3 sentencepiece model.

Text = prompt with trailing whitespace stripped + "\\nValue:"; BOS prepended, no EOS; truncated to
`max_len` (the suffix may be cut) or right-padded with 0; mask = token != 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import sentencepiece
from etils import epath

logger = logging.getLogger(__name__)

# Environment variables pistar's scripts read for the tokenizer path, in order.
TOKENIZER_ENV_VARS = ("OPENPI_VALUE_TOKENIZER_PATH", "GEMMA_TOKENIZER_PATH")
PAD_ID = 0
BOS_ID = 2


def value_prompt(prompt: str) -> str:
    """The exact text pistar encodes for a task prompt."""
    return f"{str(prompt).rstrip()}\nValue:"


class ValueTokenizer:
    """Tokenize value prompts to fixed-length int32 ids and a bool mask."""

    def __init__(self, path: epath.PathLike, max_len: int = 48):
        """`path`: a local file or one in a bucket (a checkpoint's assets in gs://...)."""
        path = epath.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"value tokenizer: no sentencepiece model at {path}")
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        self.path = path
        self.max_len = max_len
        if self._sp.bos_id() != BOS_ID or self._sp.pad_id() not in (PAD_ID, -1):
            raise ValueError(
                f"{path}: expected Gemma ids bos {BOS_ID} / pad {PAD_ID}, got bos "
                f"{self._sp.bos_id()} / pad {self._sp.pad_id()}"
            )

    @classmethod
    def resolve(cls, path: epath.PathLike | None, max_len: int = 48) -> "ValueTokenizer":
        """Use `path`, else the first of $OPENPI_VALUE_TOKENIZER_PATH, $GEMMA_TOKENIZER_PATH."""
        if path is None:
            for var in TOKENIZER_ENV_VARS:
                if os.environ.get(var):
                    path = os.environ[var]
                    break
        if path is None:
            raise FileNotFoundError(
                f"value tokenizer: no path given and none of {', '.join(TOKENIZER_ENV_VARS)} is set"
            )
        return cls(path, max_len)

    def tokenize_one(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """One prompt -> (tokens (max_len,) int32, mask (max_len,) bool)."""
        ids = [BOS_ID, *self._sp.encode(value_prompt(prompt))]
        if len(ids) > self.max_len:
            logger.debug("value prompt truncated from %d to %d tokens", len(ids), self.max_len)
            ids = ids[: self.max_len]
        tokens = np.full((self.max_len,), PAD_ID, np.int32)
        tokens[: len(ids)] = ids
        return tokens, tokens != PAD_ID

    def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """A batch of prompts -> (tokens (B, max_len) int32, mask (B, max_len) bool)."""
        if isinstance(prompts, str):
            raise TypeError("value tokenizer: pass a sequence of prompts, not one string")
        pairs = [self.tokenize_one(p) for p in prompts]
        return np.stack([t for t, _ in pairs]), np.stack([m for _, m in pairs])
