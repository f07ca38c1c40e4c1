using System.Numerics.Tensors;
using Loom.Core.Kernels;
using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>
/// The decoder forward pass shared by every architecture: computes a batch of consecutive tokens through all layers,
/// appending their keys/values to the cache. Every buffer is allocated up front for <see cref="MaxBatch"/> tokens.
/// </summary>
internal sealed unsafe class ForwardPass : IDisposable
{
    // Below this many multiply-adds per layer, attention is cheaper on one thread than handing it out.
    private const long ParallelAttentionWork = 1 << 16;

    private readonly ModelConfig _config;
    private readonly ModelWeights _weights;
    private readonly KvCache _cache;
    private readonly int _headsPerKvHead;
    private readonly float _attentionScale;
    private readonly int _ropePairs;
    private readonly RopeAngles _rope;

    private readonly PinnedBuffer _residual, _normed, _query, _key, _value, _fused, _attention, _projection, _gate, _up;
    private readonly PinnedBuffer _cos, _sin, _scores;
    private readonly Action<int> _attendHead;
    private readonly ParallelRange _parallel;

    // The batch being computed (read by the attention workers).
    private int _layer, _start, _count;

    public ForwardPass(ModelConfig config, ModelWeights weights, int capacity)
    {
        _config = config;
        _weights = weights;
        _cache = new KvCache(config, capacity);
        _headsPerKvHead = config.HeadCount / config.HeadCountKv;
        _attentionScale = 1f / MathF.Sqrt(config.KeyLength);
        _ropePairs = config.RopeDimensionCount / 2;
        _rope = new RopeAngles(config, weights.RopeFrequencyFactors);

        MaxBatch = Math.Min(InferenceSession.MaxBatchSize, capacity);
        int b = MaxBatch;
        bool fused = weights.Layers.Any(l => l.QueryKeyValue is not null);
        _residual = new PinnedBuffer((long)b * config.EmbeddingLength);
        _normed = new PinnedBuffer((long)b * config.EmbeddingLength);
        _query = new PinnedBuffer((long)b * config.QueryDim);
        _key = new PinnedBuffer((long)b * config.KeyValueDim);
        _value = new PinnedBuffer((long)b * config.ValueDim);
        _fused = new PinnedBuffer(fused ? (long)b * (config.QueryDim + config.KeyValueDim + config.ValueDim) : 0);
        _attention = new PinnedBuffer((long)b * config.HeadCount * config.ValueLength);
        _projection = new PinnedBuffer((long)b * config.EmbeddingLength);
        _gate = new PinnedBuffer(weights.Layers.Any(l => l.Gate is not null) ? (long)b * config.FeedForwardLength : 0);
        _up = new PinnedBuffer((long)b * config.FeedForwardLength);
        _cos = new PinnedBuffer((long)b * _ropePairs);
        _sin = new PinnedBuffer((long)b * _ropePairs);
        _scores = new PinnedBuffer((long)config.HeadCount * capacity);
        _attendHead = AttendHead;
        _parallel = new ParallelRange(Math.Min(Environment.ProcessorCount, config.HeadCount) - 1);
    }

    public int MaxBatch { get; }
    public int Capacity => _cache.Capacity;

    /// <summary>
    /// Computes tokens at positions start.. (at most <see cref="MaxBatch"/>, already validated), storing their keys
    /// and values. Writes logits to <paramref name="logits"/> unless it is null: every position's when
    /// <paramref name="allPositions"/>, else only the last one's.
    /// </summary>
    public void Run(ReadOnlySpan<int> tokens, int start, float* logits, bool allPositions)
    {
        int n = tokens.Length;
        int embedding = _config.EmbeddingLength;
        float* x = _residual.Pointer;

        for (int t = 0; t < n; t++)
        {
            var row = new Span<float>(x + (long)t * embedding, embedding);
            _weights.TokenEmbedding.DequantizeRow(tokens[t], row);
            if (_weights.PositionEmbedding is { } positions)
            {
                var position = new Span<float>(_projection.Pointer, embedding);
                positions.DequantizeRow(start + t, position);
                TensorPrimitives.Add(row, position, row);
            }
        }
        if (_ropePairs > 0) _rope.Compute(start, n, _cos.Pointer, _sin.Pointer);

        for (int layer = 0; layer < _weights.Layers.Length; layer++)
            RunLayer(layer, _weights.Layers[layer], start, n);

        if (logits == null) return;
        // Only the rows whose logits are wanted go through the (vocabulary-sized) output projection.
        int rows = allPositions ? n : 1;
        Normalize(x + (long)(n - rows) * embedding, _normed.Pointer, rows, _weights.OutputNorm);
        Apply(_weights.Output, _normed.Pointer, logits, rows);
    }

    private void RunLayer(int layer, LayerWeights w, int start, int n)
    {
        var c = _config;
        float* x = _residual.Pointer, normed = _normed.Pointer;
        float* q = _query.Pointer, k = _key.Pointer, v = _value.Pointer;

        Normalize(x, normed, n, w.AttentionNorm);
        if (w.QueryKeyValue is { } qkv)
        {
            Apply(qkv, normed, _fused.Pointer, n);
            int width = qkv.OutputSize;
            for (int t = 0; t < n; t++)
            {
                float* row = _fused.Pointer + (long)t * width;
                Copy(row, q + (long)t * c.QueryDim, c.QueryDim);
                Copy(row + c.QueryDim, k + (long)t * c.KeyValueDim, c.KeyValueDim);
                Copy(row + c.QueryDim + c.KeyValueDim, v + (long)t * c.ValueDim, c.ValueDim);
            }
        }
        else
        {
            Apply(w.Query!, normed, q, n);
            Apply(w.Key!, normed, k, n);
            Apply(w.Value!, normed, v, n);
        }

        if (w.QueryNorm is { } queryNorm) NormalizeHeads(q, n * c.HeadCount, queryNorm);
        if (w.KeyNorm is { } keyNorm) NormalizeHeads(k, n * c.HeadCountKv, keyNorm);
        if (_ropePairs > 0)
        {
            Rotate(q, n, c.HeadCount);
            Rotate(k, n, c.HeadCountKv);
        }

        for (int t = 0; t < n; t++)
        for (int h = 0; h < c.HeadCountKv; h++)
        {
            Copy(k + (long)t * c.KeyValueDim + h * c.KeyLength, _cache.Keys(layer, h) + (long)(start + t) * c.KeyLength, c.KeyLength);
            Copy(v + (long)t * c.ValueDim + h * c.ValueLength, _cache.Values(layer, h) + (long)(start + t) * c.ValueLength, c.ValueLength);
        }

        _layer = layer;
        _start = start;
        _count = n;
        // Work per layer ~ tokens × attended positions × head dims.
        long work = (long)n * (start + n) * c.HeadCount * (c.KeyLength + c.ValueLength);
        if (work >= ParallelAttentionWork)
            _parallel.For(c.HeadCount, _attendHead);
        else
            for (int h = 0; h < c.HeadCount; h++) AttendHead(h);

        Apply(w.AttentionOutput, _attention.Pointer, _projection.Pointer, n);
        AddInPlace(x, _projection.Pointer, (long)n * c.EmbeddingLength);

        Normalize(x, normed, n, w.FeedForwardNorm);
        long hidden = (long)n * c.FeedForwardLength;
        var up = new Span<float>(_up.Pointer, (int)hidden);
        Apply(w.Up, normed, _up.Pointer, n);
        if (w.Gate is { } gateWeights)
        {
            Apply(gateWeights, normed, _gate.Pointer, n);
            // silu(g)·u = g·sigmoid(g)·u
            var gate = new Span<float>(_gate.Pointer, (int)hidden);
            TensorPrimitives.Multiply(up, gate, up);
            TensorPrimitives.Sigmoid(gate, gate);
            TensorPrimitives.Multiply(up, gate, up);
        }
        else
        {
            Gelu(up);
        }
        Apply(w.Down, _up.Pointer, _projection.Pointer, n);
        AddInPlace(x, _projection.Pointer, (long)n * c.EmbeddingLength);
    }

    /// <summary>Causal attention of every batch token for one query head (heads run in parallel).</summary>
    private void AttendHead(int head)
    {
        var c = _config;
        int kvHead = head / _headsPerKvHead;
        float* keys = _cache.Keys(_layer, kvHead);
        float* values = _cache.Values(_layer, kvHead);
        float* scores = _scores.Pointer + (long)head * _cache.Capacity;
        int keyLength = c.KeyLength, valueLength = c.ValueLength;

        for (int t = 0; t < _count; t++)
        {
            int visible = _start + t + 1;
            var query = new ReadOnlySpan<float>(_query.Pointer + (long)t * c.QueryDim + head * keyLength, keyLength);
            for (int j = 0; j < visible; j++)
                scores[j] = TensorPrimitives.Dot(query, new ReadOnlySpan<float>(keys + (long)j * keyLength, keyLength)) * _attentionScale;

            var weights = new Span<float>(scores, visible);
            float max = TensorPrimitives.Max(weights);
            TensorPrimitives.Subtract(weights, max, weights);
            TensorPrimitives.Exp(weights, weights);
            TensorPrimitives.Multiply(weights, 1f / TensorPrimitives.Sum(weights), weights);

            var output = new Span<float>(_attention.Pointer + (long)t * c.HeadCount * valueLength + head * valueLength, valueLength);
            output.Clear();
            for (int j = 0; j < visible; j++)
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(values + (long)j * valueLength, valueLength), weights[j], output, output);
        }
    }

    /// <summary>Applies RoPE to <paramref name="heads"/> heads of each batch token, in place.</summary>
    private void Rotate(float* data, int n, int heads)
    {
        int headLength = _config.KeyLength, pairs = _ropePairs;
        bool neox = _config.Spec.Rope == RopeKind.NeoX;
        for (int t = 0; t < n; t++)
        {
            float* cos = _cos.Pointer + (long)t * pairs, sin = _sin.Pointer + (long)t * pairs;
            for (int h = 0; h < heads; h++)
            {
                float* v = data + ((long)t * heads + h) * headLength;
                // Normal mode pairs (2i, 2i+1); NeoX pairs (i, i + n_rot/2). Dimensions past n_rot stay as they are.
                int stride = neox ? 1 : 2, offset = neox ? pairs : 1;
                for (int i = 0; i < pairs; i++)
                {
                    float* a = v + i * stride;
                    float x0 = a[0], x1 = a[offset];
                    a[0] = x0 * cos[i] - x1 * sin[i];
                    a[offset] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }

    private void Normalize(float* x, float* y, int n, NormWeights norm)
    {
        int length = _config.EmbeddingLength;
        for (int t = 0; t < n; t++)
        {
            var input = new ReadOnlySpan<float>(x + (long)t * length, length);
            var output = new Span<float>(y + (long)t * length, length);
            if (_config.Spec.Norm == NormKind.RmsNorm)
                RmsNorm(input, output, _config.NormEpsilon);
            else
                LayerNorm(input, output, _config.NormEpsilon);
            TensorPrimitives.Multiply(output, norm.Weight, output);
            if (norm.Bias is not null) TensorPrimitives.Add(output, norm.Bias, output);
        }
    }

    /// <summary>Per-head RMSNorm of <paramref name="count"/> consecutive head vectors (Qwen3's Q/K norm).</summary>
    private void NormalizeHeads(float* data, int count, float[] weight)
    {
        int length = weight.Length;
        for (int i = 0; i < count; i++)
        {
            var head = new Span<float>(data + (long)i * length, length);
            RmsNorm(head, head, _config.NormEpsilon);
            TensorPrimitives.Multiply(head, weight, head);
        }
    }

    // As ggml: the squares are summed in double, the scale is computed in float.
    private static void RmsNorm(ReadOnlySpan<float> x, Span<float> y, float epsilon)
    {
        double sum = 0;
        foreach (float value in x) sum += value * value;
        float mean = (float)(sum / x.Length);
        TensorPrimitives.Multiply(x, 1f / MathF.Sqrt(mean + epsilon), y);
    }

    private static void LayerNorm(ReadOnlySpan<float> x, Span<float> y, float epsilon)
    {
        double sum = 0;
        foreach (float value in x) sum += value;
        float mean = (float)(sum / x.Length);
        TensorPrimitives.Subtract(x, mean, y);
        double squares = 0;
        foreach (float value in y) squares += value * value;
        float variance = (float)(squares / x.Length);
        TensorPrimitives.Multiply(y, 1f / MathF.Sqrt(variance + epsilon), y);
    }

    /// <summary>
    /// GELU (tanh approximation) as ggml's CPU backend computes it: the input is rounded to F16 and looked up in a
    /// table of F16 results, with the identity above 10 and zero below −10. Matching it keeps GPT-2 logits identical
    /// to llama.cpp's (the exact formula differs from it by up to ~1e-3).
    /// </summary>
    private static void Gelu(Span<float> x)
    {
        var table = GeluTable.Value;
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            x[i] = v <= -10f ? 0f : v >= 10f ? v : (float)table[BitConverter.HalfToUInt16Bits((Half)v)];
        }
    }

    private static readonly Lazy<Half[]> GeluTable = new(() =>
    {
        const float sqrtTwoOverPi = 0.79788456080286535587989211986876f;
        const float coefficient = 0.044715f;
        var table = new Half[1 << 16];
        for (int i = 0; i < table.Length; i++)
        {
            float v = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            table[i] = (Half)(0.5f * v * (1f + MathF.Tanh(sqrtTwoOverPi * v * (1f + coefficient * v * v))));
        }
        return table;
    });

    private static void Apply(Linear linear, float* x, float* y, int n)
    {
        linear.Weight.Multiply(x, y, n);
        if (linear.Bias is { } bias)
            for (int t = 0; t < n; t++)
            {
                var row = new Span<float>(y + (long)t * bias.Length, bias.Length);
                TensorPrimitives.Add(row, bias, row);
            }
    }

    private static void AddInPlace(float* x, float* y, long length)
    {
        var target = new Span<float>(x, checked((int)length));
        TensorPrimitives.Add(target, new ReadOnlySpan<float>(y, target.Length), target);
    }

    public void Dispose() => _parallel.Dispose();

    private static void Copy(float* source, float* destination, int count) =>
        new ReadOnlySpan<float>(source, count).CopyTo(new Span<float>(destination, count));
}
