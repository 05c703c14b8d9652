"""Text for Wan models: UMT5 states at the real tokens, zero-padded to a fixed 512 rows, all attended.

Wan was trained on UMT5-XXL states of a prompt tokenized to at most 512 tokens (the closing </s> is a real
token), followed by zero vectors up to 512; its cross-attention attends to all 512 rows with no mask, so
the zero rows (projected by the text MLP to a constant vector) are part of the context. A VideoDiT holding
a Wan model therefore packs the padding rows too. The unconditional input of classifier-free guidance is
the negative prompt (or "") encoded and padded the same way; Wan has no learned null token.

`encode_prompts` returns the real-token states (what a latent cache stores); `pad_text` adds the zero rows
when a sample is built. The prompt is cleaned as diffusers' WanPipeline cleans it (HTML entities
unescaped, whitespace collapsed, and ftfy's text repair when ftfy is installed).
"""

from __future__ import annotations

import html
import importlib.util

import regex
import torch

from videodit.text_encoder import TextEncoder

TEXT_LEN = 512  # Wan's text context length


def clean_prompt(text: str) -> str:
    """A prompt cleaned like diffusers' WanPipeline does before tokenizing."""
    if importlib.util.find_spec("ftfy") is not None:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_prompts(
    encoder: TextEncoder, prompts: list[str], max_length: int = TEXT_LEN
) -> list[torch.Tensor]:
    """prompts (B strings) -> B tensors `(L_i, dim)`: the encoder's states at the L_i real tokens
    (L_i <= max_length, </s> included; "" gives the single </s> token). The encoder runs on the batch padded
    to max_length tokens with its attention mask, as the Wan pipeline runs it."""
    if isinstance(prompts, str):
        raise ValueError("encode_prompts takes a list of prompts, got a single string")
    if not 1 <= max_length <= TEXT_LEN:
        raise ValueError(f"max_length must be in [1, {TEXT_LEN}], got {max_length}")
    if not prompts:
        return []
    batch = encoder.tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids = batch["input_ids"].to(encoder.device)  # (B, max_length)
    mask = batch["attention_mask"].to(encoder.device)  # (B, max_length)
    hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, max_length, dim)
    lengths = mask.gt(0).sum(dim=1).tolist()
    return [h[:n] for h, n in zip(hidden, lengths)]


def pad_text(states: torch.Tensor, length: int = TEXT_LEN) -> torch.Tensor:
    """Real-token states `(L, dim)` -> `(length, dim)` with zero rows after them."""
    if states.dim() != 2:
        raise ValueError(f"text states must be (L, dim), got shape {tuple(states.shape)}")
    if states.shape[0] > length:
        raise ValueError(f"text has {states.shape[0]} tokens, more than the {length} a Wan model takes")
    return torch.cat([states, states.new_zeros(length - states.shape[0], states.shape[1])])
