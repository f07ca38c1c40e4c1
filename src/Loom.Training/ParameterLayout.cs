namespace Loom.Training;

/// <summary>Where one named tensor lives inside the flat parameter (and gradient, and optimizer-moment) arrays.</summary>
public readonly record struct TensorSlot(string Name, int Offset, int Rows, int Cols, bool Decays)
{
    public int Length => Rows * Cols;
    public Span<float> Of(float[] flat) => flat.AsSpan(Offset, Length);
}

/// <summary>One layer's tensors, named as llama GGUF names them.</summary>
public sealed record LayerSlots(TensorSlot AttentionNorm, TensorSlot Query, TensorSlot Key, TensorSlot Value, TensorSlot Output,
    TensorSlot FeedForwardNorm, TensorSlot Gate, TensorSlot Up, TensorSlot Down)
{
    /// <summary>The query, key and value weights as one [Dim + 2·KvDim, Dim] matrix: <see cref="ParameterLayout"/> keeps them adjacent.</summary>
    public Span<float> QueryKeyValue(float[] flat)
    {
        if (Key.Offset != Query.Offset + Query.Length || Value.Offset != Key.Offset + Key.Length)
            throw new InvalidOperationException("the query, key and value slots are not adjacent");
        return flat.AsSpan(Query.Offset, Query.Length + Key.Length + Value.Length);
    }
}

/// <summary>
/// All parameters of the model in one flat float array: the optimizer, clipping and checkpoints then work on a single
/// span. Matrices are stored [out, in] row-major, the layout of GGUF/PyTorch linear weights.
/// </summary>
public sealed class ParameterLayout
{
    public ParameterLayout(ModelShape shape)
    {
        shape.Validate();
        var slots = new List<TensorSlot>();
        int offset = 0;
        TensorSlot Add(string name, int rows, int cols, bool decays)
        {
            var slot = new TensorSlot(name, offset, rows, cols, decays);
            offset += slot.Length;
            slots.Add(slot);
            return slot;
        }
        TokenEmbedding = Add("token_embd.weight", shape.VocabSize, shape.Dim, true);
        Layers = new LayerSlots[shape.Layers];
        for (int l = 0; l < shape.Layers; l++)
        {
            string p = $"blk.{l}.";
            Layers[l] = new LayerSlots(
                Add(p + "attn_norm.weight", 1, shape.Dim, false),
                Add(p + "attn_q.weight", shape.Dim, shape.Dim, true),
                Add(p + "attn_k.weight", shape.KvDim, shape.Dim, true),
                Add(p + "attn_v.weight", shape.KvDim, shape.Dim, true),
                Add(p + "attn_output.weight", shape.Dim, shape.Dim, true),
                Add(p + "ffn_norm.weight", 1, shape.Dim, false),
                Add(p + "ffn_gate.weight", shape.Hidden, shape.Dim, true),
                Add(p + "ffn_up.weight", shape.Hidden, shape.Dim, true),
                Add(p + "ffn_down.weight", shape.Dim, shape.Hidden, true));
        }
        OutputNorm = Add("output_norm.weight", 1, shape.Dim, false);
        Slots = slots;
        Count = offset;
    }

    public TensorSlot TokenEmbedding { get; }
    public LayerSlots[] Layers { get; }
    public TensorSlot OutputNorm { get; }
    public IReadOnlyList<TensorSlot> Slots { get; }
    public int Count { get; }

    internal static long ParameterCount(ModelShape s) =>
        (long)s.VocabSize * s.Dim + s.Dim + (long)s.Layers * (2L * s.Dim + 2L * s.Dim * s.Dim + 2L * s.KvDim * s.Dim + 3L * s.Hidden * s.Dim);
}
