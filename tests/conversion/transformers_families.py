"""``transformers`` architectures from tiny configs (random weights, no downloads) for ``modify.convert``.

Each row: the family, a factory ``(transformers) -> model`` (eval mode), the kind of input
(``"tokens"`` ``(B, T)`` ids, ``"images"`` ``(B, 3, H, W)``, ``"features"`` ``(B, mel, frames)``),
the field ``convert`` returns (``output=``) and the keyword arguments fixed per call.
"""

from __future__ import annotations

import torch

VOCAB, HIDDEN, HEADS, LAYERS, IMAGE = 64, 16, 2, 1, 32

_TEXT = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=32)
_DECODER = dict(_TEXT, max_position_embeddings=64, num_key_value_heads=1, pad_token_id=0, bos_token_id=0, eos_token_id=0)
_VISION = dict(image_size=IMAGE, patch_size=8, num_channels=3, **{k: v for k, v in _TEXT.items() if k != "vocab_size"})
_NO_CACHE = {"use_cache": False}


def _causal(config: str, model: str, **extra):
    return lambda t: getattr(t, model)(getattr(t, config)(**{**_DECODER, **extra}))


def _config(config: str, model: str, **fields):
    return lambda t: getattr(t, model)(getattr(t, config)(**fields))


# (family, factory, input kind, output field, kwargs)
FAMILIES = [
    ("GPT-2", _config("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64, bos_token_id=0, eos_token_id=0), "tokens", "logits", _NO_CACHE),
    ("GPT-NeoX", _causal("GPTNeoXConfig", "GPTNeoXForCausalLM"), "tokens", "logits", _NO_CACHE),
    ("OPT", _config("OPTConfig", "OPTForCausalLM", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=32, word_embed_proj_dim=HIDDEN, max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0), "tokens", "logits", _NO_CACHE),
    ("Llama", _causal("LlamaConfig", "LlamaForCausalLM"), "tokens", "logits", _NO_CACHE),
    ("Mistral", _causal("MistralConfig", "MistralForCausalLM"), "tokens", "logits", _NO_CACHE),
    ("Qwen2", _causal("Qwen2Config", "Qwen2ForCausalLM"), "tokens", "logits", _NO_CACHE),
    ("Gemma", _causal("GemmaConfig", "GemmaForCausalLM", head_dim=8), "tokens", "logits", _NO_CACHE),
    ("Phi-3", _causal("Phi3Config", "Phi3ForCausalLM"), "tokens", "logits", _NO_CACHE),
    ("Falcon", _config("FalconConfig", "FalconForCausalLM", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, pad_token_id=0, bos_token_id=0, eos_token_id=0), "tokens", "logits", _NO_CACHE),
    ("BERT", _config("BertConfig", "BertModel", **_TEXT), "tokens", "last_hidden_state", {}),
    ("RoBERTa", _config("RobertaConfig", "RobertaModel", **_TEXT), "tokens", "last_hidden_state", {}),
    ("DistilBERT", _config("DistilBertConfig", "DistilBertModel", vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=32), "tokens", "last_hidden_state", {}),
    ("ALBERT", _config("AlbertConfig", "AlbertModel", embedding_size=8, **_TEXT), "tokens", "last_hidden_state", {}),
    ("ELECTRA", _config("ElectraConfig", "ElectraModel", embedding_size=8, **_TEXT), "tokens", "last_hidden_state", {}),
    ("T5 encoder", _config("T5Config", "T5EncoderModel", vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=32, num_layers=LAYERS, num_heads=HEADS), "tokens", "last_hidden_state", {}),
    ("ViT", _config("ViTConfig", "ViTModel", **_VISION), "images", "last_hidden_state", {}),
    ("DeiT", _config("DeiTConfig", "DeiTModel", **_VISION), "images", "last_hidden_state", {}),
    ("BEiT", _config("BeitConfig", "BeitModel", use_relative_position_bias=True, **_VISION), "images", "last_hidden_state", {}),
    ("Swin", _config("SwinConfig", "SwinModel", image_size=IMAGE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4), "images", "last_hidden_state", {}),
    ("ConvNeXt", _config("ConvNextConfig", "ConvNextModel", hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), "images", "last_hidden_state", {}),
    ("ResNet", _config("ResNetConfig", "ResNetModel", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"), "images", "last_hidden_state", {}),
    ("MobileNetV2", _config("MobileNetV2Config", "MobileNetV2Model", depth_multiplier=0.25, image_size=IMAGE), "images", "last_hidden_state", {}),
    ("RegNet", _config("RegNetConfig", "RegNetModel", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8), "images", "last_hidden_state", {}),
    ("CLIP vision", _config("CLIPVisionConfig", "CLIPVisionModel", **_VISION), "images", "last_hidden_state", {}),
    ("CLIP text", _config("CLIPTextConfig", "CLIPTextModel", max_position_embeddings=64, **_TEXT), "tokens", "last_hidden_state", {}),
    ("Whisper encoder", _config("WhisperConfig", "WhisperForAudioClassification", vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, encoder_attention_heads=HEADS, encoder_ffn_dim=32, num_mel_bins=8, max_source_positions=16), "features", "logits", {}),
    ("GPT-J", _config("GPTJConfig", "GPTJForCausalLM", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, rotary_dim=4, n_positions=64, bos_token_id=0, eos_token_id=0, pad_token_id=0), "tokens", "logits", _NO_CACHE),
    ("BLOOM", _config("BloomConfig", "BloomForCausalLM", vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, pad_token_id=0, bos_token_id=0, eos_token_id=0), "tokens", "logits", _NO_CACHE),
]


def example(kind: str, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """An input of ``kind``: ``length`` tokens, an image of side ``length``, or ``length`` frames."""
    if kind == "tokens":
        return torch.randint(1, VOCAB, (batch, length), generator=generator)
    if kind == "images":
        return torch.randn(batch, 3, length, length, generator=generator)
    return torch.randn(batch, 8, length, generator=generator)


# (batch, length) of the example convert sees, and of another call
SIZES = {"tokens": ((2, 8), (3, 11)), "images": ((2, IMAGE), (3, IMAGE)), "features": ((2, 32), (3, 32))}
