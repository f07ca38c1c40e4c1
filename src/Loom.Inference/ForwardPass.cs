using Loom.Core.Threading;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using Loom.Core.Kernels;
using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>Which logits a segment of a forward step wants from the output head.</summary>
internal enum LogitRows : byte
{
    None,
    Last,
    All,
}

/// <summary>
/// One sequence's share of a forward step: the cache it attends to and extends, the position its new tokens start
/// at, which of the step's tokens are its (Offset, Count), and which of its positions need logits.
/// </summary>
internal struct ForwardSegment(KvCache cache, int start, int offset, int count, LogitRows logits)
{
    public KvCache Cache = cache;
    public int Start = start;
    public int Offset = offset;
    public int Count = count;
    public LogitRows Logits = logits;
}

/// <summary>
/// The decoder forward pass shared by every architecture. One step computes up to <see cref="MaxTokens"/> tokens
/// belonging to any number of sequences (each with its own KV cache): every weight matrix multiplies all of the
/// step's tokens at once, so the weights are read once per step, while positions, RoPE and attention follow each
/// token's own sequence. Every buffer is allocated up front.
/// </summary>
internal sealed unsafe class ForwardPass : IParallelWork
{
    // Below this many multiply-adds per layer, attention is cheaper on one thread than handing it out.
    private const long ParallelAttentionWork = 1 << 16;
    // A prompt's tokens are attended in parts of this many, so that a few key/value heads still give every thread work.
    private const int AttentionPartTokens = 32;
    // Query tokens that go through the cache together (each block of cache rows is read once for all of them), at most;
    // fewer where their score rows would take more than ScoreBudgetFloats in all.
    private const int MaxQueryBlock = 16;
    private const long ScoreBudgetFloats = 4L << 20;

    private readonly ModelConfig _config;
    private readonly ModelWeights _weights;
    private readonly int _headsPerKvHead;
    private readonly float _attentionScale;
    private readonly int _ropePairs;
    private readonly RopeAngles _rope;

    private readonly PinnedBuffer _residual, _normed, _query, _key, _value, _fused, _attention, _projection, _gate, _up;
    private readonly PinnedBuffer _cos, _sin;
    // Softmax scratch, one block of rows (MaxContext floats for each query head of a key/value head and each token of a
    // query block) per thread that can attend at once; a work item claims a free block.
    private readonly PinnedBuffer _scores;
    private readonly int[] _scoreRowBusy;
    private readonly int _queryBlock;
    // Beside each score block, room for a block of F16 cache rows converted to floats.
    private readonly PinnedBuffer _converted;
    private readonly int _convertedStride;

    // The step being computed (read by the attention workers): its segments, and their tokens in attention parts.
    private ForwardSegment[] _segments = [];
    private int _segmentCount, _layer;
    private readonly AttentionPart[] _parts;
    private int _partCount;

    /// <param name="maxTokens">Tokens one step can hold (all sequences together).</param>
    /// <param name="maxContext">Largest cache capacity a segment's cache may have.</param>
    public ForwardPass(ModelConfig config, ModelWeights weights, int maxTokens, int maxContext)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxContext, 1);
        _config = config;
        _weights = weights;
        _headsPerKvHead = config.HeadCount / config.HeadCountKv;
        _attentionScale = 1f / MathF.Sqrt(config.KeyLength);
        _ropePairs = config.RopeDimensionCount / 2;
        _rope = new RopeAngles(config, weights.RopeFrequencyFactors);

        MaxTokens = maxTokens;
        MaxContext = maxContext;
        long b = maxTokens;
        bool fused = weights.Layers.Any(l => l.QueryKeyValue is not null);
        _residual = new PinnedBuffer(b * config.EmbeddingLength);
        _normed = new PinnedBuffer(b * config.EmbeddingLength);
        _query = new PinnedBuffer(b * config.QueryDim);
        _key = new PinnedBuffer(b * config.KeyValueDim);
        _value = new PinnedBuffer(b * config.ValueDim);
        _fused = new PinnedBuffer(fused ? b * (config.QueryDim + config.KeyValueDim + config.ValueDim) : 0);
        _attention = new PinnedBuffer(b * config.HeadCount * config.ValueLength);
        _projection = new PinnedBuffer(b * config.EmbeddingLength);
        _gate = new PinnedBuffer(weights.Layers.Any(l => l.Gate is not null) ? b * config.FeedForwardLength : 0);
        _up = new PinnedBuffer(b * config.FeedForwardLength);
        _cos = new PinnedBuffer(b * _ropePairs);
        _sin = new PinnedBuffer(b * _ropePairs);

        // One score block (a row per query head of a key/value head and token of a query block) per thread that may
        // attend at once; a thread finding every block taken waits for one.
        _scoreRowBusy = new int[Math.Max(Environment.ProcessorCount, LoomThreadPool.Shared.ThreadCount)];
        long scoreRows = (long)_scoreRowBusy.Length * _headsPerKvHead * maxContext;
        _queryBlock = (int)Math.Clamp(ScoreBudgetFloats / scoreRows, 1, MaxQueryBlock);
        _scores = new PinnedBuffer(scoreRows * _queryBlock);
        _parts = new AttentionPart[maxTokens];
        _convertedStride = Math.Max(OperatorKernels.HalfBlockFloats, Math.Max(config.KeyLength, config.ValueLength));
        _converted = new PinnedBuffer((long)_scoreRowBusy.Length * _convertedStride);
    }

    public int MaxTokens { get; }
    public int MaxContext { get; }

    /// <summary>
    /// Computes one step: tokens[s.Offset .. s.Offset + s.Count) at positions s.Start.. of each segment's cache
    /// (already validated: at most <see cref="MaxTokens"/> tokens, room in every cache, one segment per cache),
    /// storing their keys and values. The logits rows the segments ask for are written consecutively, in segment
    /// order, to <paramref name="logits"/> (which may be null when none are asked for).
    /// </summary>
    public void Run(ReadOnlySpan<int> tokens, ForwardSegment[] segments, int segmentCount, float* logits)
    {
        int n = tokens.Length;
        int embedding = _config.EmbeddingLength;
        float* x = _residual.Pointer;

        for (int t = 0; t < n; t++)
            _weights.TokenEmbedding.DequantizeRow(tokens[t], new Span<float>(x + (long)t * embedding, embedding));
        for (int s = 0; s < segmentCount; s++)
        {
            var segment = segments[s];
            if (_weights.PositionEmbedding is { } positions)
                for (int t = 0; t < segment.Count; t++)
                {
                    var row = new Span<float>(x + (long)(segment.Offset + t) * embedding, embedding);
                    var position = new Span<float>(_projection.Pointer, embedding);
                    positions.DequantizeRow(segment.Start + t, position);
                    TensorPrimitives.Add(row, position, row);
                }
            if (_ropePairs > 0)
            {
                long at = (long)segment.Offset * _ropePairs;
                _rope.Compute(segment.Start, segment.Count, _cos.Pointer + at, _sin.Pointer + at);
            }
        }

        _segments = segments;
        _segmentCount = segmentCount;
        _partCount = 0;
        for (int s = 0; s < segmentCount; s++)
            for (int first = 0; first < segments[s].Count; first += AttentionPartTokens)
                _parts[_partCount++] = new AttentionPart(s, first, Math.Min(AttentionPartTokens, segments[s].Count - first));
        for (int layer = 0; layer < _weights.Layers.Length; layer++)
            RunLayer(layer, _weights.Layers[layer], n);
        _segments = [];

        // Only the rows whose logits are wanted go through the (vocabulary-sized) output projection.
        int rows = 0;
        for (int s = 0; s < segmentCount; s++)
        {
            var segment = segments[s];
            if (segment.Logits == LogitRows.None) continue;
            int count = segment.Logits == LogitRows.All ? segment.Count : 1;
            int first = segment.Offset + segment.Count - count;
            Normalize(x + (long)first * embedding, _normed.Pointer + (long)rows * embedding, count, _weights.OutputNorm);
            rows += count;
        }
        if (rows > 0) Apply(_weights.Output, _normed.Pointer, logits, rows);
    }

    private void RunLayer(int layer, LayerWeights w, int n)
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
            ApplyShared(normed, n, w.Query!, q, w.Key!, k, w.Value!, v);
        }

        if (w.QueryNorm is { } queryNorm) NormalizeHeads(q, n * c.HeadCount, queryNorm);
        if (w.KeyNorm is { } keyNorm) NormalizeHeads(k, n * c.HeadCountKv, keyNorm);
        if (_ropePairs > 0)
        {
            Rotate(q, n, c.HeadCount);
            Rotate(k, n, c.HeadCountKv);
        }

        // Each sequence's new keys and values go to its own cache; work per layer ~ tokens × attended positions × head dims.
        long work = 0;
        for (int s = 0; s < _segmentCount; s++)
        {
            var segment = _segments[s];
            var cache = segment.Cache;
            for (int t = 0; t < segment.Count; t++)
            {
                long token = segment.Offset + t, position = segment.Start + t;
                for (int h = 0; h < c.HeadCountKv; h++)
                    cache.Store(layer, h, position, k + token * c.KeyValueDim + h * c.KeyLength, v + token * c.ValueDim + h * c.ValueLength);
            }
            work += (long)segment.Count * (segment.Start + segment.Count);
        }
        work *= (long)c.HeadCount * (c.KeyLength + c.ValueLength);

        _layer = layer;
        int items = _partCount * c.HeadCountKv;
        if (work >= ParallelAttentionWork)
            LoomThreadPool.Shared.Run(this, items);
        else
            for (int i = 0; i < items; i++) AttendItem(i);

        Apply(w.AttentionOutput, _attention.Pointer, _projection.Pointer, n);
        AddInPlace(x, _projection.Pointer, (long)n * c.EmbeddingLength);

        Normalize(x, normed, n, w.FeedForwardNorm);
        long hidden = (long)n * c.FeedForwardLength;
        var up = new Span<float>(_up.Pointer, (int)hidden);
        if (w.Gate is { } gateWeights)
        {
            ApplyShared(normed, n, w.Up, _up.Pointer, gateWeights, _gate.Pointer);
            // silu(g)·u = g·sigmoid(g)·u
            var gate = new Span<float>(_gate.Pointer, (int)hidden);
            TensorPrimitives.Multiply(up, gate, up);
            TensorPrimitives.Sigmoid(gate, gate);
            TensorPrimitives.Multiply(up, gate, up);
        }
        else
        {
            Apply(w.Up, normed, _up.Pointer, n);
            Gelu(up);
        }
        Apply(w.Down, _up.Pointer, _projection.Pointer, n);
        AddInPlace(x, _projection.Pointer, (long)n * c.EmbeddingLength);
    }

    /// <summary>Attention work item <paramref name="item"/> = (part, key/value head): claims a score block and attends.</summary>
    void IParallelWork.Execute(int item) => AttendItem(item);

    private void AttendItem(int item)
    {
        int kvHeads = _config.HeadCountKv;
        // the last parts first: later tokens see more of the cache, and the lighter items then fill in behind them
        var part = _parts[_partCount - 1 - item / kvHeads];
        int row = 0;
        while (Interlocked.CompareExchange(ref _scoreRowBusy[row], 1, 0) != 0)
            row = (row + 1) % _scoreRowBusy.Length;
        try
        {
            Attend(_segments[part.Segment], part.First, part.Count, item % kvHeads, row);
        }
        finally
        {
            Volatile.Write(ref _scoreRowBusy[row], 0);
        }
    }

    /// <summary>
    /// Causal attention of <paramref name="count"/> of one sequence's new tokens, from its token
    /// <paramref name="first"/>, for the query heads of one key/value head, against that sequence's cache: the heads,
    /// and up to a query block of tokens, go through the keys and the values together, so each block of the cache is
    /// read once for all of them.
    /// </summary>
    private void Attend(in ForwardSegment segment, int first, int count, int kvHead, int scratchRow)
    {
        var c = _config;
        var cache = segment.Cache;
        int group = _headsPerKvHead, firstHead = kvHead * group;
        float* scores = _scores.Pointer + (long)scratchRow * _queryBlock * group * MaxContext;
        if (!Vector256.IsHardwareAccelerated || c.KeyLength % 8 != 0 || c.ValueLength % 8 != 0)
        {
            AttendPortable(segment, first, count, kvHead, scores);
            return;
        }
        float* converted = _converted.Pointer + (long)scratchRow * _convertedStride;
        bool halves = cache.Type == KvCacheType.F16, finite = !cache.HoldsNonFiniteHalves;
        void* keys = cache.Keys(_layer, kvHead);
        void* values = cache.Values(_layer, kvHead);
        int keyLength = c.KeyLength, valueLength = c.ValueLength;

        for (int t = first; t < first + count; t += _queryBlock)
        {
            int tokens = Math.Min(_queryBlock, first + count - t);
            long token = segment.Offset + t;
            int firstVisible = segment.Start + t + 1;
            float* queries = _query.Pointer + token * c.QueryDim + firstHead * keyLength;
            OperatorKernels.ScoresTokens(queries, c.QueryDim, tokens, group, keys, halves, finite, keyLength, firstVisible, _attentionScale,
                scores, MaxContext, converted);
            for (int i = 0; i < tokens; i++)
                for (int g = 0; g < group; g++)
                    OperatorKernels.Softmax(new Span<float>(scores + (long)(i * group + g) * MaxContext, firstVisible + i));
            float* outputs = _attention.Pointer + token * c.HeadCount * valueLength + firstHead * valueLength;
            OperatorKernels.WeightedSumTokens(values, halves, finite, valueLength, tokens, firstVisible, scores, MaxContext, group, outputs,
                c.HeadCount * valueLength, converted);
        }
    }

    /// <summary>The same attention with library calls, for head sizes the kernels do not take and machines without vectors.</summary>
    private void AttendPortable(in ForwardSegment segment, int first, int count, int kvHead, float* scores)
    {
        var c = _config;
        var cache = segment.Cache;
        int group = _headsPerKvHead, firstHead = kvHead * group;
        int keyLength = c.KeyLength, valueLength = c.ValueLength;
        Span<float> row = stackalloc float[Math.Max(keyLength, valueLength)];

        for (int t = first; t < first + count; t++)
        {
            long token = segment.Offset + t;
            int visible = segment.Start + t + 1;
            float* queries = _query.Pointer + token * c.QueryDim + firstHead * keyLength;
            for (int j = 0; j < visible; j++)
            {
                var key = CachedRow(cache.Keys(_layer, kvHead), j, keyLength, cache.Type, row);
                for (int g = 0; g < group; g++)
                    scores[(long)g * MaxContext + j] = TensorPrimitives.Dot(new ReadOnlySpan<float>(queries + g * keyLength, keyLength), key) * _attentionScale;
            }
            for (int g = 0; g < group; g++) OperatorKernels.Softmax(new Span<float>(scores + (long)g * MaxContext, visible));

            float* outputs = _attention.Pointer + token * c.HeadCount * valueLength + firstHead * valueLength;
            new Span<float>(outputs, group * valueLength).Clear();
            for (int j = 0; j < visible; j++)
            {
                var value = CachedRow(cache.Values(_layer, kvHead), j, valueLength, cache.Type, row);
                for (int g = 0; g < group; g++)
                {
                    var output = new Span<float>(outputs + g * valueLength, valueLength);
                    TensorPrimitives.MultiplyAdd(value, scores[(long)g * MaxContext + j], output, output);
                }
            }
        }
    }

    /// <summary>Row <paramref name="position"/> of a head's cached keys or values as floats (F16 rows converted into <paramref name="scratch"/>).</summary>
    private static ReadOnlySpan<float> CachedRow(void* head, int position, int length, KvCacheType type, Span<float> scratch)
    {
        if (type == KvCacheType.F32) return new ReadOnlySpan<float>((float*)head + (long)position * length, length);
        var converted = scratch[..length];
        TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)head + (long)position * length, length), converted);
        return converted;
    }

    /// <summary>Applies RoPE to <paramref name="heads"/> heads of each batch token, in place.</summary>
    private void Rotate(float* data, int n, int heads) =>
        OperatorKernels.Rotate(data, n, heads, _config.KeyLength, _ropePairs, _config.Spec.Rope == RopeKind.NeoX, _cos.Pointer, _sin.Pointer);

    private void Normalize(float* x, float* y, int n, NormWeights norm)
    {
        int length = _config.EmbeddingLength;
        for (int t = 0; t < n; t++)
        {
            var input = new ReadOnlySpan<float>(x + (long)t * length, length);
            var output = new Span<float>(y + (long)t * length, length);
            if (_config.Spec.Norm == NormKind.RmsNorm)
                OperatorKernels.RmsNorm(input, output, _config.NormEpsilon);
            else
                OperatorKernels.LayerNorm(input, output, _config.NormEpsilon);
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
            OperatorKernels.RmsNorm(head, head, _config.NormEpsilon);
            TensorPrimitives.Multiply(head, weight, head);
        }
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
        AddBias(linear, y, n);
    }

    /// <summary>Two or three projections of the same input in one pass (the input is quantized once).</summary>
    private static void ApplyShared(float* x, int n, Linear first, float* firstY, Linear second, float* secondY, Linear? third = null, float* thirdY = null)
    {
        WeightMatrix.MultiplyShared(x, n, LoomThreadPool.Shared, first.Weight, firstY, second.Weight, secondY, third?.Weight, thirdY);
        AddBias(first, firstY, n);
        AddBias(second, secondY, n);
        if (third is not null) AddBias(third, thirdY, n);
    }

    private static void AddBias(Linear linear, float* y, int n)
    {
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


    private static void Copy(float* source, float* destination, int count) =>
        new ReadOnlySpan<float>(source, count).CopyTo(new Span<float>(destination, count));
}

/// <summary>Tokens [First, First + Count) of segment Segment of a step: one attention work item per key/value head.</summary>
internal readonly record struct AttentionPart(int Segment, int First, int Count);
