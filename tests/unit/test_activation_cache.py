"""The activation cache: special positions removed, shard boundaries invisible, interrupted writes rebuilt."""

import torch

from saebench.run import activations
from saebench.run.activations import ActivationCache, build_caches, cache_key


class FakeAdapter:
    """Activations are a known function of (context, position), so the cache can be checked exactly."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def d_model(self, hookpoint):
        return 3 if hookpoint == "a" else 5

    def special_mask(self, tokens):
        return (tokens == 1) | (tokens == 2) | (tokens == 0)

    def capture(self, tokens, hookpoints):
        B, T = tokens.shape
        base = tokens.float()[..., None]
        return {h: base.expand(B, T, self.d_model(h)) + torch.arange(self.d_model(h)).float() for h in hookpoints}


def contexts(n=9, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, 100, (n, T), generator=g)
    t[:, 0] = 1  # BOS
    t[2, 3] = 2  # an EOS inside a context
    return t


def expected(ctx, d):
    keep = ~((ctx == 1) | (ctx == 2) | (ctx == 0))
    return ctx[keep].float()[:, None] + torch.arange(d).float()


def test_one_pass_fills_every_hookpoint_without_special_positions(tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "SHARD_ELEMENTS", 20)  # tiny shards: many boundaries
    ctx = contexts()
    caches = build_caches(FakeAdapter(), ctx, {"a": tmp_path / "a", "b": tmp_path / "b"}, batch_contexts=4)
    for h, d in (("a", 3), ("b", 5)):
        cache = caches[h]
        assert len(cache.manifest["shards"]) > 3
        assert cache.n_tokens == int((ctx > 2).sum()) and cache.d == d
        torch.testing.assert_close(torch.cat(list(cache.batches(7))), expected(ctx, d))
        assert torch.equal(cache.tokens(), ctx)
        sizes = [b.shape[0] for b in cache.batches(7)]
        assert all(s == 7 for s in sizes[:-1]) and 0 < sizes[-1] <= 7
        assert sum(b.shape[0] for b in cache.batches(4, max_tokens=10)) == 10


def test_folder_without_manifest_is_not_a_cache_and_is_rebuilt(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "shard_00000.safetensors").write_bytes(b"half a file")
    assert not ActivationCache.exists(folder)
    cache = build_caches(FakeAdapter(), contexts(), {"a": folder})["a"]
    assert ActivationCache.exists(folder) and not (tmp_path / "a.partial").exists()
    assert cache.n_tokens > 0


def test_cache_key_depends_on_every_field():
    base = dict(model={"path": "m"}, hookpoint="layers.1", data={"tokens": 10})
    assert cache_key(**base) == cache_key(**dict(base))
    assert cache_key(**base) != cache_key(**dict(base, hookpoint="layers.2"))
    assert cache_key(**base) != cache_key(**dict(base, data={"tokens": 11}))


class NoisyAdapter(FakeAdapter):
    """Values with full float32 mantissas, which bfloat16 must round."""

    def capture(self, tokens, hookpoints):
        out = super().capture(tokens, hookpoints)
        return {h: v * 1.0123456 + 0.001 * torch.sin(v * 7.3) for h, v in out.items()}


def test_a_bfloat16_cache_halves_the_shards_and_reads_back_float32_rounded_values(tmp_path):
    ctx = contexts()
    full = build_caches(NoisyAdapter(), ctx, {"a": tmp_path / "f32"})["a"]
    half = build_caches(NoisyAdapter(), ctx, {"a": tmp_path / "bf16"}, dtype="bfloat16")["a"]
    assert (full.manifest["dtype"], half.manifest["dtype"]) == ("float32", "bfloat16")
    x32, x16 = torch.cat(list(full.batches(5))), torch.cat(list(half.batches(5)))
    assert x16.dtype == torch.float32 and torch.equal(x16, x32.to(torch.bfloat16).float()) and not torch.equal(x16, x32)
    size = lambda c: sum((c.folder / s["file"]).stat().st_size for s in c.manifest["shards"])  # noqa: E731
    data_bytes = x32.numel() * 4
    assert size(full) - data_bytes == size(half) - data_bytes // 2  # the same headers around half the data
