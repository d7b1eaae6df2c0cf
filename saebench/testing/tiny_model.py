"""A tiny randomly initialised causal LM, saved like any Hugging Face model folder (tests, smoke benchmarks)."""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_model(
    folder: str | Path, family: str = "llama", n_layers: int = 3, d_model: int = 32, seed: int = 0
) -> Path:
    """Write a tiny randomly initialised causal LM with a byte-level tokenizer to ``folder``, offline.

    For tests and smoke benchmarks: ``family`` "llama" or "gpt2"; vocabulary = <pad> 0, <eos> 1,
    <bos> 2 and the 256 bytes (no merges), so any text tokenises without unknown tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    specials = ["<pad>", "<eos>", "<bos>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    ids = {"vocab_size": len(vocab), "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            **ids,
        )
        model = LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=1024, **ids)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown family {family!r}: llama or gpt2")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_tiny_gemma3(folder: str | Path, n_layers: int = 2, d_model: int = 32, head_dim: int = 8) -> Path:
    """A tiny random Gemma 3 (norms before and after its attention and MLP, 4 heads, sliding window 8) with
    the tiny Llama's byte tokenizer. Its norm weights are drawn around 0 (scale 1 ± 0.5) so each one matters."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = make_tiny_model(folder, "llama", n_layers=n_layers, d_model=d_model)
    cfg = Gemma3TextConfig(
        vocab_size=259, hidden_size=d_model, intermediate_size=48, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=256,
        sliding_window=8, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(folder)  # replaces the Llama's config and weights
    return folder
