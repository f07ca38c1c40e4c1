using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>One sequence's share of a batched step: the slot it lives in and the tokens to append to it.</summary>
public readonly record struct BatchEntry(int Slot, ReadOnlyMemory<int> Tokens);

/// <summary>
/// Several independent sequences, each in its own KV-cache slot, advanced together: one call appends every entry's
/// tokens and returns each entry's last-position logits. All entries' tokens (single decode tokens and prefill
/// chunks alike) go through each weight matrix together, so the weights are read once per step rather than once per
/// sequence; attention runs per sequence against its own slot. Results equal evaluating each sequence alone (up to
/// float rounding: the matrix kernels may sum several tokens in another order than one). Not thread-safe: one caller
/// (a scheduler) drives it.
/// </summary>
public sealed unsafe class BatchedInference : IDisposable
{
    private readonly ForwardPass _forward;
    private readonly KvCache[] _caches;
    private readonly int[] _lengths;
    private readonly bool[] _inCall;
    // One step's tokens (copied from the entries) and its segments, with the slot each segment extends.
    private readonly int[] _stepTokens;
    private readonly ForwardSegment[] _stepSegments;
    private readonly int[] _stepSlots;
    private bool _disposed;

    /// <param name="contextSize">Positions each slot holds (0: the model's context, at most <see cref="InferenceSession.DefaultContextSize"/>).</param>
    /// <param name="cacheType">How keys and values are stored: F16 (as llama.cpp by default) or F32.</param>
    public BatchedInference(TransformerModel model, int maxSequences, int contextSize = 0, KvCacheType cacheType = KvCacheType.F16)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSequences, 1);
        contextSize = InferenceSession.ResolveContextSize(model, contextSize);
        Model = model;
        ContextSize = contextSize;
        // A step holds a full prefill chunk plus one decode token for every other sequence.
        MaxTokensPerStep = InferenceSession.MaxBatchSize + maxSequences;
        _caches = new KvCache[maxSequences];
        for (int i = 0; i < maxSequences; i++) _caches[i] = new KvCache(model.Config, contextSize, cacheType);
        _lengths = new int[maxSequences];
        _inCall = new bool[maxSequences];
        _stepTokens = new int[MaxTokensPerStep];
        _stepSegments = new ForwardSegment[maxSequences];
        _stepSlots = new int[maxSequences];
        _forward = new ForwardPass(model.Config, model.Weights, MaxTokensPerStep, contextSize);
    }

    public TransformerModel Model { get; }
    public int MaxSequences => _caches.Length;
    /// <summary>Positions each slot can hold.</summary>
    public int ContextSize { get; }
    public KvCacheType CacheType => _caches[0].Type;
    /// <summary>
    /// Tokens computed in one forward step. An <see cref="Evaluate"/> call with more tokens than this is split into
    /// several steps (weights are then read once per step), so a scheduler gets the most from each call by keeping
    /// its total within this.
    /// </summary>
    public int MaxTokensPerStep { get; }

    /// <summary>Tokens currently cached for a slot.</summary>
    public int Length(int slot)
    {
        CheckSlot(slot);
        return _lengths[slot];
    }

    /// <summary>Forgets a slot's cached positions from <paramref name="position"/> on (0 frees the slot for a new sequence).</summary>
    public void Truncate(int slot, int position)
    {
        CheckSlot(slot);
        if (position < 0 || position > _lengths[slot])
            throw new ArgumentOutOfRangeException(nameof(position), position, $"position must be between 0 and slot {slot}'s length {_lengths[slot]}");
        _lengths[slot] = position;
    }

    /// <summary>
    /// Appends each entry's tokens to its slot and writes that entry's last-position logits to
    /// logits[i × vocab ..]. Each slot may appear at most once per call. The whole call is checked before anything is
    /// computed, so a rejected call leaves every slot as it was.
    /// </summary>
    public void Evaluate(ReadOnlySpan<BatchEntry> entries, Span<float> logits)
    {
        Validate(entries, logits);
        int vocab = Model.Config.VocabSize;
        fixed (float* output = logits)
        {
            // Entries are packed into steps in order, so the entries that finish in one step are consecutive and
            // their logits rows land consecutively at the first finishing entry's place.
            int entry = 0, done = 0;
            while (entry < entries.Length)
            {
                int tokens = 0, segments = 0, firstFinished = -1;
                while (entry < entries.Length && tokens < MaxTokensPerStep)
                {
                    var source = entries[entry].Tokens.Span;
                    int slot = entries[entry].Slot;
                    int take = Math.Min(source.Length - done, MaxTokensPerStep - tokens);
                    source.Slice(done, take).CopyTo(_stepTokens.AsSpan(tokens));
                    bool finishes = done + take == source.Length;
                    _stepSegments[segments] = new ForwardSegment(_caches[slot], _lengths[slot], tokens, take,
                        finishes ? LogitRows.Last : LogitRows.None);
                    _stepSlots[segments++] = slot;
                    tokens += take;
                    if (finishes)
                    {
                        if (firstFinished < 0) firstFinished = entry;
                        entry++;
                        done = 0;
                    }
                    else
                    {
                        done += take;
                    }
                }
                _forward.Run(_stepTokens.AsSpan(0, tokens), _stepSegments, segments,
                    firstFinished < 0 ? null : output + (long)firstFinished * vocab);
                for (int s = 0; s < segments; s++) _lengths[_stepSlots[s]] += _stepSegments[s].Count;
            }
        }
    }

    public void Dispose() => _disposed = true;

    private void Validate(ReadOnlySpan<BatchEntry> entries, Span<float> logits)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ObjectDisposedException.ThrowIf(Model.IsDisposed, Model);
        int vocab = Model.Config.VocabSize;
        if (logits.Length < (long)entries.Length * vocab)
            throw new ArgumentException($"logits holds {logits.Length} floats but {entries.Length} entries × {vocab} vocabulary are needed", nameof(logits));
        try
        {
            for (int i = 0; i < entries.Length; i++)
            {
                int slot = entries[i].Slot;
                if ((uint)slot >= (uint)_caches.Length)
                    throw new ArgumentOutOfRangeException(nameof(entries), slot, $"entry {i}: slot must be between 0 and {_caches.Length - 1}");
                if (_inCall[slot]) throw new ArgumentException($"slot {slot} appears twice in one batch", nameof(entries));
                _inCall[slot] = true;
                var tokens = entries[i].Tokens.Span;
                if (tokens.IsEmpty) throw new ArgumentException($"entry {i} (slot {slot}) has no tokens", nameof(entries));
                for (int j = 0; j < tokens.Length; j++)
                    if ((uint)tokens[j] >= (uint)vocab)
                        throw new ArgumentOutOfRangeException(nameof(entries), tokens[j],
                            $"entry {i} (slot {slot}): token {j} has id {tokens[j]}, outside the vocabulary (0..{vocab - 1})");
                if (tokens.Length > ContextSize - _lengths[slot])
                    throw new InvalidOperationException(
                        $"entry {i}: {tokens.Length} more tokens do not fit in slot {slot}: {_lengths[slot]} of {ContextSize} positions are used");
            }
        }
        finally
        {
            foreach (var entry in entries)
                if ((uint)entry.Slot < (uint)_inCall.Length) _inCall[entry.Slot] = false;
        }
    }

    private void CheckSlot(int slot)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((uint)slot >= (uint)_caches.Length)
            throw new ArgumentOutOfRangeException(nameof(slot), slot, $"slot must be between 0 and {_caches.Length - 1}");
    }
}
