"""The UMT5-XXL text encoder as Wan uses it: cleaned prompts, 512 tokens, padded rows zeroed."""

from __future__ import annotations

import html
import re

import ftfy
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

__all__ = ["TextEncoder", "clean_prompt"]


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy, HTML-unescape twice, collapse whitespace runs, strip (no lower-casing)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder(nn.Module):
    """Prompts -> (B, text_len, d_model) context for the DiT's cross-attention.

    The context is not trimmed: it always has `text_len` rows, and the rows after each prompt's last token
    (EOS included) are zero, exactly as upstream feeds the DiT.
    """

    def __init__(self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase, text_len: int = 512):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B,) prompts -> (B, text_len, d_model) in the model's dtype, on its device."""
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.model.device
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)  # (B, text_len)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, text_len, d_model)
        return hidden.masked_fill(mask[..., None] == 0, 0.0)
