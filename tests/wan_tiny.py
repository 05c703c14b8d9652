"""Tiny random Wan models and pipeline folders for the Wan tests, built offline from configs."""

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

# Tiny stand-ins of the two supported families: Wan2.1 T2V (16 latent channels) and Wan2.2 TI2V-5B
# (48 latent channels); real widths are 1536-5120, these keep the structure at test size.
WAN21 = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
             out_channels=16, text_dim=32, freq_dim=32, ffn_dim=40, num_layers=2)
WAN22_TI2V = dict(WAN21, in_channels=48, out_channels=48, num_attention_heads=3, attention_head_dim=8)

WORDS = ["<pad>", "</s>", "<unk>", "a", "dog", "in", "the", "snow", "cat", "running", "blurry", "low",
         "quality", "red", "ball"]


def diffusers_transformer(config: dict, seed: int = 0) -> WanTransformer3DModel:
    """A random WanTransformer3DModel with every parameter perturbed (so no table or bias is trivially 0)."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer that appends </s> like T5's, built without any download."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def save_pipeline(folder: Path, seed: int = 0, flow_shift: float = 3.0) -> Path:
    """A tiny random WanPipeline (Wan2.1-style: UniPC on flow sigmas) saved to `folder`."""
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=WAN21["text_dim"], d_kv=8,
                                               d_ff=64, num_layers=2, num_heads=4,
                                               relative_attention_num_buckets=8)).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=WAN21["in_channels"], dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=flow_shift)
    pipe = WanPipeline(tokenizer=tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=diffusers_transformer(WAN21, seed))
    pipe.save_pretrained(folder)
    return folder
