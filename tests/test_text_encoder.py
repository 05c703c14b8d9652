"""TextEncoder: bundled MiniLM plus tiny random T5 / UMT5 / CLIP text folders built offline."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from videodit.text_encoder import TextEncoder

WORDS = ["<pad>", "</s>", "<unk>", "a", "dog", "cat", "running", "in", "the", "snow"]


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("default")


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer that appends </s>, built without any download."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _tiny_model(kind: str):
    t5_sizes = dict(vocab_size=16, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    if kind == "t5":
        return T5EncoderModel(T5Config(**t5_sizes))
    if kind == "umt5":
        return UMT5EncoderModel(UMT5Config(**t5_sizes))
    cfg = CLIPTextConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    return CLIPTextModel(cfg)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text_encoders")
    folders = {}
    for kind in ("t5", "umt5", "clip"):
        torch.manual_seed(0)
        folder = root / kind
        _tiny_model(kind).save_pretrained(folder)
        _tiny_tokenizer().save_pretrained(folder)
        folders[kind] = folder
    return folders


def _check_padding_removed(enc: TextEncoder, short: str, long: str) -> None:
    """Encoding `short` alone or beside a longer prompt gives the same unpadded states."""
    alone, pooled_alone = enc.encode([short])
    both, pooled_both = enc.encode([long, short])
    assert alone[0].shape == both[1].shape
    assert both[0].shape[0] > both[1].shape[0]
    torch.testing.assert_close(alone[0], both[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_alone[0], both[1].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_both[1], pooled_alone[0], atol=1e-5, rtol=1e-5)


def test_minilm_default_shapes_and_padding(minilm):
    assert minilm.dim == 384
    states, pooled = minilm.encode(["dog running in snow", "", "a cat"])
    assert [s.shape for s in states] == [(6, 384), (0, 384), (4, 384)]  # [CLS] ... [SEP]
    assert pooled.shape == (3, 384)
    assert torch.count_nonzero(pooled[1]) == 0
    assert torch.isfinite(states[0]).all()
    _check_padding_removed(minilm, "a cat", "a dog running through deep fresh snow at night")


def test_minilm_prompts_differ_and_truncate(minilm):
    states, pooled = minilm.encode(["a red car", "a dog"])
    assert not torch.allclose(pooled[0], pooled[1], atol=1e-3)
    short = TextEncoder("default", max_length=5)
    states, _ = short.encode(["one two three four five six seven eight"])
    assert states[0].shape == (5, 384)


def test_all_empty_prompts_need_no_forward(minilm):
    states, pooled = minilm.encode(["", ""])
    assert [s.shape for s in states] == [(0, 384), (0, 384)]
    assert torch.count_nonzero(pooled) == 0


@pytest.mark.parametrize(
    "kind,model_cls", [("t5", T5EncoderModel), ("umt5", UMT5EncoderModel), ("clip", CLIPTextModel)]
)
def test_tiny_hf_encoders(tiny_folders, kind, model_cls):
    enc = TextEncoder(tiny_folders[kind])
    assert isinstance(enc.model, model_cls)
    assert enc.dim == 32
    states, pooled = enc.encode(["a dog running", "", "cat"])
    assert [s.shape for s in states] == [(4, 32), (0, 32), (2, 32)]  # words + </s>
    assert pooled.shape == (3, 32)
    _check_padding_removed(enc, "cat", "a dog running in the snow")


def test_clip_max_length_limited_by_positions(tiny_folders):
    assert TextEncoder(tiny_folders["clip"]).max_length == 16
    with pytest.raises(ValueError, match="max_length=99"):
        TextEncoder(tiny_folders["clip"], max_length=99)


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no_such_encoder"
    with pytest.raises(ValueError, match="no_such_encoder"):
        TextEncoder(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        TextEncoder(tmp_path / "empty")


def test_single_string_rejected(minilm):
    with pytest.raises(ValueError, match="list"):
        minilm.encode("a dog")
