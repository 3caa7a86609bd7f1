"""Report text for image-report pretraining: a byte tokenizer and a small text encoder, both
fixed by code alone.

* :class:`ByteTokenizer`: UTF-8 bytes are the tokens (ids 0-255) plus three specials (padding,
  begin, end): 259 ids, whatever text it has seen. There is no vocabulary to download and none to
  build: a vocabulary learned from the sites' reports (BPE, WordPiece) would itself be a summary of
  their text, would differ between sites and would have to travel with the model. ``decode`` of
  ``encode`` gives back the same bytes.
* :func:`normalize_report_text`: lower case and single spaces (a fixed rule, no data), applied to
  reports and prompts alike.
* :func:`split_sentences`: a report's sentences (ConVIRT samples one per view during training).
* :class:`TextEncoder`: byte embedding -> strided 1D convolution (byte n-grams, halves the length)
  -> learned positions -> a small pre-norm Transformer -> mean over the non-padding positions ->
  LayerNorm: ``[B, L] int64 -> [B, width]``. Trained from scratch; its shapes depend only on the
  job spec, so every site and the server build the same tensors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259
_SPACES = re.compile(r"\s+")
# sentence ends (., ?, ! followed by space or end) and the report's section breaks (new lines)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n+")
_SECTION_HEADER = re.compile(r"^\s*(findings|impression|impressions|conclusion|history|indication)\s*:\s*",
                             re.IGNORECASE)


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids, framed by ``BOS`` and ``EOS`` and padded with ``PAD``.

    Attributes:
        max_len: length of every encoded sequence (specials included); longer text is cut at
            ``max_len - 2`` bytes (the start of a report holds its findings).

    The tokenizer has no state beyond ``max_len``: nothing is learned from the text it encodes.
    """

    max_len: int = 320

    def __post_init__(self) -> None:
        if self.max_len < 3:
            raise ValueError(f"max_len must be >= 3 (two specials and one byte), got {self.max_len}")

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def encode_bytes(self, data: bytes) -> torch.Tensor:
        """``[max_len]`` int64: BOS, the first ``max_len - 2`` bytes, EOS, then PAD."""
        body = list(data[: self.max_len - 2])
        ids = [BOS_ID, *body, EOS_ID]
        ids += [PAD_ID] * (self.max_len - len(ids))
        return torch.tensor(ids, dtype=torch.int64)

    def encode(self, text: str) -> torch.Tensor:
        """``[max_len]`` int64 ids of ``text``'s UTF-8 bytes (see :meth:`encode_bytes`)."""
        return self.encode_bytes(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), max_len]`` int64."""
        if not texts:
            return torch.zeros((0, self.max_len), dtype=torch.int64)
        return torch.stack([self.encode(t) for t in texts])

    @staticmethod
    def decode_bytes(ids: torch.Tensor | Sequence[int]) -> bytes:
        """The bytes between BOS and EOS (specials dropped)."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        out = bytearray()
        for value in values:
            if value == EOS_ID:
                break
            if 0 <= value < 256:
                out.append(value)
        return bytes(out)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text of :meth:`decode_bytes` (a multi-byte character cut by truncation is replaced)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def normalize_report_text(text: str) -> str:
    """Lower case, whitespace runs as one space, stripped (the same for reports and prompts)."""
    return _SPACES.sub(" ", text.lower()).strip()


def split_sentences(text: str) -> list[str]:
    """The non-empty sentences of a report, section headers (``FINDINGS:``) removed."""
    out = []
    for part in _SENTENCE_END.split(text):
        part = _SECTION_HEADER.sub("", part).strip()
        if part:
            out.append(part)
    return out


class TextEncoder(nn.Module):
    """``forward(ids [B, L] int64) -> [B, width]`` float.

    Args:
        max_len: the tokenizer's ``max_len`` (sets the position table).
        width: embedding width of bytes and Transformer tokens.
        layers, heads: Transformer encoder layers and attention heads (``width % heads == 0``).
        stride: the convolution's stride: the Transformer sees ``ceil(L / stride)`` positions.
        dropout: inside the Transformer layers.
    """

    def __init__(self, *, max_len: int = 320, width: int = 64, layers: int = 2, heads: int = 4, stride: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not a multiple of its heads {heads}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.kernel = 2 * stride + 1 if stride > 1 else 3
        self.embed = nn.Embedding(VOCAB_SIZE, width, padding_idx=PAD_ID)
        self.conv = nn.Conv1d(width, width, self.kernel, stride=stride, padding=self.kernel // 2)
        self.positions = nn.Parameter(torch.zeros(1, self._reduced(max_len), width))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.width = width

    def _reduced(self, length: int) -> int:
        return (length + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = (ids != PAD_ID).float()  # [B, L]
        x = self.embed(ids).transpose(1, 2)  # [B, W, L]
        x = nn.functional.gelu(self.conv(x)).transpose(1, 2)  # [B, L', W]
        # a reduced position is valid if its window holds at least one real byte
        keep = nn.functional.max_pool1d(valid[:, None], self.kernel, self.stride, self.kernel // 2)[:, 0] > 0
        length = x.shape[1]
        x = x + self.positions[:, :length]
        x = self.transformer(x, src_key_padding_mask=~keep)
        weights = keep.to(x.dtype)[..., None]
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.norm(pooled)
