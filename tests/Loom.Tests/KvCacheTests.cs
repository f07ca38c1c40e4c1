using Loom.Inference;
using Loom.Models.Architectures;
using Loom.Tests.Conformance;

namespace Loom.Tests;

/// <summary>What the two KV cache types store and what they cost.</summary>
public unsafe class KvCacheTests : IDisposable
{
    private readonly string _path = new SyntheticModel { KvHeads = 2, KeyLength = 32 }.Build().WriteTemp();
    private readonly TransformerModel _model;

    public KvCacheTests() => _model = TransformerModel.Load(_path);

    public void Dispose()
    {
        _model.Dispose();
        File.Delete(_path);
    }

    [Fact]
    public void F16CacheHoldsEachValueRoundedToNearestHalf()
    {
        var config = _model.Config;
        var cache = new KvCache(config, capacity: 8, KvCacheType.F16);
        var (key, value) = Vectors(config, 1e-3f, 3.0f);
        fixed (float* k = key, v = value) cache.Store(layer: 1, head: 1, position: 5, k, v);

        var keys = (Half*)cache.Keys(1, 1) + 5 * config.KeyLength;
        var values = (Half*)cache.Values(1, 1) + 5 * config.ValueLength;
        for (int i = 0; i < key.Length; i++) Assert.Equal(BitConverter.HalfToUInt16Bits((Half)key[i]), BitConverter.HalfToUInt16Bits(keys[i]));
        for (int i = 0; i < value.Length; i++) Assert.Equal(BitConverter.HalfToUInt16Bits((Half)value[i]), BitConverter.HalfToUInt16Bits(values[i]));
        Assert.Contains(key, x => (float)(Half)x != x); // rounding happened
        Assert.False(cache.HoldsNonFiniteHalves);
        Assert.Equal(0, BitConverter.HalfToUInt16Bits(((Half*)cache.Keys(1, 0) + 5 * config.KeyLength)[0])); // the other head is untouched
    }

    [Fact]
    public void F32CacheHoldsTheExactValues()
    {
        var config = _model.Config;
        var cache = new KvCache(config, capacity: 8, KvCacheType.F32);
        var (key, value) = Vectors(config, 1e-3f, 1e6f);
        fixed (float* k = key, v = value) cache.Store(0, 1, 7, k, v);
        Assert.Equal(key, new ReadOnlySpan<float>((float*)cache.Keys(0, 1) + 7 * config.KeyLength, config.KeyLength).ToArray());
        Assert.Equal(value, new ReadOnlySpan<float>((float*)cache.Values(0, 1) + 7 * config.ValueLength, config.ValueLength).ToArray());
    }

    /// <summary>
    /// A value beyond ±65504 becomes Inf in F16, and the cache says so, so attention reads it as Inf (see
    /// OperatorKernelsTests) rather than through the short conversion, which would make it a 2^16-range number.
    /// </summary>
    [Fact]
    public void F16CacheTurnsOverflowIntoInfinity()
    {
        var config = _model.Config;
        var cache = new KvCache(config, capacity: 4, KvCacheType.F16);
        var (key, value) = Vectors(config, 1f, 1f);
        value[4] = -65504f;
        fixed (float* k = key, v = value) cache.Store(0, 0, 0, k, v);
        Assert.False(cache.HoldsNonFiniteHalves);
        value[3] = 70000f;
        fixed (float* k = key, v = value) cache.Store(0, 0, 1, k, v);
        Assert.True(cache.HoldsNonFiniteHalves);
        var stored = (Half*)cache.Values(0, 0) + config.ValueLength;
        Assert.True(Half.IsPositiveInfinity(stored[3]));
        Assert.Equal(-65504f, (float)stored[4]);
    }

    [Fact]
    public void F16CacheTakesHalfTheMemory()
    {
        var config = _model.Config;
        long f32 = InferenceSession.KvCacheBytes(config, 100, KvCacheType.F32);
        Assert.Equal((long)config.LayerCount * 100 * config.HeadCountKv * (config.KeyLength + config.ValueLength) * sizeof(float), f32);
        Assert.Equal(f32 / 2, InferenceSession.KvCacheBytes(config, 100, KvCacheType.F16));
    }

    /// <summary>A context too large for one array is refused with a clear error before anything is allocated.</summary>
    [Theory]
    [InlineData(KvCacheType.F16)]
    [InlineData(KvCacheType.F32)]
    public void OversizedCacheIsRefusedClearly(KvCacheType type)
    {
        var error = Assert.Throws<OutOfMemoryException>(() => new KvCache(_model.Config, capacity: 1 << 30, type));
        Assert.Contains("use a smaller context", error.Message);
    }

    [Fact]
    public void SessionsReportTheirCacheType()
    {
        using (var session = new InferenceSession(_model, 16)) Assert.Equal(KvCacheType.F16, session.CacheType);
        using (var session = new InferenceSession(_model, 16, KvCacheType.F32)) Assert.Equal(KvCacheType.F32, session.CacheType);
        using (var batch = new BatchedInference(_model, 2, 16, KvCacheType.F32)) Assert.Equal(KvCacheType.F32, batch.CacheType);
        Assert.Throws<ArgumentOutOfRangeException>(() => new InferenceSession(_model, 16, (KvCacheType)7));
    }

    /// <summary>
    /// F16 and F32 caches give the same greedy continuation on this model and close logits: the F16 cache is a
    /// rounding of the same computation, not another one.
    /// </summary>
    [Fact]
    public void F16CacheLogitsStayCloseToF32()
    {
        int[] tokens = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315];
        int vocab = _model.Config.VocabSize;
        var f32 = new float[tokens.Length * vocab];
        var f16 = new float[tokens.Length * vocab];
        using (var session = new InferenceSession(_model, 32, KvCacheType.F32)) session.EvaluateAll(tokens, f32);
        using (var session = new InferenceSession(_model, 32, KvCacheType.F16)) session.EvaluateAll(tokens, f16);
        float worst = 0, scale = 0;
        for (int i = 0; i < f32.Length; i++)
        {
            worst = Math.Max(worst, Math.Abs(f32[i] - f16[i]));
            scale = Math.Max(scale, Math.Abs(f32[i]));
        }
        Assert.True(worst > 0, "the F16 cache changed nothing: it is not rounding");
        Assert.True(worst < 1e-3f * scale, $"F16 cache logits differ from F32 ones by {worst} (largest logit {scale})");
        for (int p = 0; p < tokens.Length; p++)
            Assert.Equal(Comparison.ArgMax(f32.AsSpan(p * vocab, vocab)), Comparison.ArgMax(f16.AsSpan(p * vocab, vocab)));
    }

    private static (float[] Key, float[] Value) Vectors(ModelConfig config, float keyScale, float valueScale)
    {
        var rng = new Random(5);
        var key = new float[config.KeyLength];
        var value = new float[config.ValueLength];
        for (int i = 0; i < key.Length; i++) key[i] = (rng.NextSingle() * 2 - 1) * keyScale;
        for (int i = 0; i < value.Length; i++) value[i] = (rng.NextSingle() * 2 - 1) * valueScale;
        return (key, value);
    }
}
