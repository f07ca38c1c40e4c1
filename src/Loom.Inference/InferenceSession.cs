using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>One sequence being evaluated: owns its KV cache and logits buffer.</summary>
public sealed unsafe class InferenceSession : IDisposable
{
    /// <summary>Context used when none is given, unless the model's trained context is shorter.</summary>
    public const int DefaultContextSize = 4096;
    /// <summary>Tokens computed together in one pass; longer inputs are split into batches of this size.</summary>
    public const int MaxBatchSize = 128;

    private readonly KvCache _cache;
    private readonly ForwardPass _forward;
    private readonly ForwardSegment[] _segment = new ForwardSegment[1];
    private readonly PinnedBuffer _logits;
    private int _position;
    private bool _disposed;

    /// <param name="contextSize">Positions the KV cache holds (0: the model's context, at most <see cref="DefaultContextSize"/>).</param>
    /// <param name="cacheType">How keys and values are stored: F16 (as llama.cpp by default) or F32.</param>
    public InferenceSession(TransformerModel model, int contextSize = 0, KvCacheType cacheType = KvCacheType.F16)
    {
        contextSize = ResolveContextSize(model, contextSize);
        Model = model;
        _cache = new KvCache(model.Config, contextSize, cacheType);
        _forward = new ForwardPass(model.Config, model.Weights, Math.Min(MaxBatchSize, contextSize), contextSize);
        _logits = new PinnedBuffer(model.Config.VocabSize);
    }

    public TransformerModel Model { get; }
    /// <summary>Number of tokens currently in the KV cache.</summary>
    public int Position => _position;
    public int ContextSize => _cache.Capacity;
    public KvCacheType CacheType => _cache.Type;

    /// <summary>Appends tokens (one batched prefill) and returns the logits after the last one (valid until the next call).</summary>
    public ReadOnlySpan<float> Evaluate(ReadOnlySpan<int> tokens)
    {
        Validate(tokens);
        Append(tokens, _logits.Pointer, allPositions: false);
        return _logits.Span;
    }

    /// <summary>Appends tokens and writes the logits of every position into <paramref name="logits"/> (tokens.Length × vocab).</summary>
    public void EvaluateAll(ReadOnlySpan<int> tokens, Span<float> logits)
    {
        Validate(tokens);
        long needed = (long)tokens.Length * Model.Config.VocabSize;
        if (logits.Length < needed)
            throw new ArgumentException($"logits holds {logits.Length} floats but {tokens.Length} tokens × {Model.Config.VocabSize} vocabulary need {needed}", nameof(logits));
        fixed (float* destination = logits) Append(tokens, destination, allPositions: true);
    }

    /// <summary>Memory a KV cache of <paramref name="positions"/> positions takes for <paramref name="config"/>'s layers.</summary>
    public static long KvCacheBytes(ModelConfig config, int positions, KvCacheType type) =>
        config.LayerCount * (long)positions * KvCache.BytesPerPosition(config, type);

    /// <summary>Forgets cached positions from <paramref name="position"/> on (0 clears the cache).</summary>
    public void Truncate(int position)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (position < 0 || position > _position)
            throw new ArgumentOutOfRangeException(nameof(position), position, $"position must be between 0 and the current position {_position}");
        _position = position;
    }

    public void Dispose() => _disposed = true;

    /// <summary>The context a model allows: <paramref name="contextSize"/> checked against it, or the default for 0.</summary>
    internal static int ResolveContextSize(TransformerModel model, int contextSize)
    {
        ArgumentNullException.ThrowIfNull(model);
        ObjectDisposedException.ThrowIf(model.IsDisposed, model);
        int limit = model.Config.ContextLength;
        if (model.Weights.PositionEmbedding is { } positions) limit = Math.Min(limit, positions.Rows);
        if (contextSize == 0) contextSize = Math.Min(limit, DefaultContextSize);
        if (contextSize < 1 || contextSize > limit)
            throw new ArgumentOutOfRangeException(nameof(contextSize), contextSize,
                $"context size must be between 1 and the model's context length {limit}");
        return contextSize;
    }

    private void Append(ReadOnlySpan<int> tokens, float* logits, bool allPositions)
    {
        int vocab = Model.Config.VocabSize;
        for (int done = 0; done < tokens.Length;)
        {
            int count = Math.Min(_forward.MaxTokens, tokens.Length - done);
            // Evaluate wants logits from the final batch only; EvaluateAll from every batch, at its offset.
            var rows = allPositions ? LogitRows.All : done + count == tokens.Length ? LogitRows.Last : LogitRows.None;
            _segment[0] = new ForwardSegment(_cache, _position, 0, count, rows);
            _forward.Run(tokens.Slice(done, count), _segment, 1, allPositions ? logits + (long)done * vocab : logits);
            _position += count;
            done += count;
        }
    }

    /// <summary>Rejects a whole call before anything is computed, so a bad token never leaves a half-written cache.</summary>
    private void Validate(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ObjectDisposedException.ThrowIf(Model.IsDisposed, Model);
        if (tokens.IsEmpty) throw new ArgumentException("no tokens to evaluate", nameof(tokens));
        int vocab = Model.Config.VocabSize;
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(tokens), tokens[i], $"token {i} has id {tokens[i]}, outside the vocabulary (0..{vocab - 1})");
        if (tokens.Length > ContextSize - _position)
            throw new InvalidOperationException(
                $"{tokens.Length} more tokens do not fit in the context: {_position} of {ContextSize} positions are used");
    }
}
