using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>One sequence's share of a batched step: the slot it lives in and the tokens to append to it.</summary>
public readonly record struct BatchEntry(int Slot, ReadOnlyMemory<int> Tokens);

/// <summary>
/// Several independent sequences, each in its own KV-cache slot, advanced together: one call appends every entry's
/// tokens and returns each entry's last-position logits. Results equal evaluating each sequence alone.
/// </summary>
public sealed class BatchedInference : IDisposable
{
    // Per-slot sessions: a correct baseline that a shared-matmul batched forward pass replaces.
    private readonly InferenceSession[] _slots;

    public BatchedInference(TransformerModel model, int maxSequences, int contextSize = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSequences, 1);
        Model = model;
        _slots = new InferenceSession[maxSequences];
        for (int i = 0; i < maxSequences; i++) _slots[i] = new InferenceSession(model, contextSize);
        ContextSize = _slots[0].ContextSize;
    }

    public TransformerModel Model { get; }
    public int MaxSequences => _slots.Length;
    /// <summary>Positions each slot can hold.</summary>
    public int ContextSize { get; }

    /// <summary>Tokens currently cached for a slot.</summary>
    public int Length(int slot) => Slot(slot).Position;

    /// <summary>Forgets a slot's cached positions from <paramref name="position"/> on (0 frees the slot for a new sequence).</summary>
    public void Truncate(int slot, int position) => Slot(slot).Truncate(position);

    /// <summary>
    /// Appends each entry's tokens to its slot and writes that entry's last-position logits to
    /// logits[i × vocab ..]. Each slot may appear at most once per call.
    /// </summary>
    public void Evaluate(ReadOnlySpan<BatchEntry> entries, Span<float> logits)
    {
        int vocab = Model.Config.VocabSize;
        if (logits.Length < (long)entries.Length * vocab)
            throw new ArgumentException($"logits holds {logits.Length} floats but {entries.Length} entries × {vocab} vocabulary are needed", nameof(logits));
        for (int i = 0; i < entries.Length; i++)
        {
            for (int j = 0; j < i; j++)
                if (entries[j].Slot == entries[i].Slot)
                    throw new ArgumentException($"slot {entries[i].Slot} appears twice in one batch", nameof(entries));
            if (entries[i].Tokens.IsEmpty) throw new ArgumentException($"entry {i} has no tokens", nameof(entries));
        }
        for (int i = 0; i < entries.Length; i++)
            Slot(entries[i].Slot).Evaluate(entries[i].Tokens.Span).CopyTo(logits.Slice(i * vocab, vocab));
    }

    public void Dispose()
    {
        foreach (var session in _slots) session.Dispose();
    }

    private InferenceSession Slot(int slot)
    {
        if ((uint)slot >= (uint)_slots.Length)
            throw new ArgumentOutOfRangeException(nameof(slot), slot, $"slot must be between 0 and {_slots.Length - 1}");
        return _slots[slot];
    }
}
