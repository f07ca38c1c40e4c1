namespace Loom.Training;

/// <summary>Hyper-parameters of the trainable Llama-style decoder (tied embedding and output head).</summary>
public sealed record ModelShape
{
    public required int VocabSize { get; init; }
    public required int Dim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    /// <summary>Width of the SwiGLU feed-forward layer.</summary>
    public required int Hidden { get; init; }
    /// <summary>Longest sequence the model is trained on (and exported with).</summary>
    public required int Context { get; init; }
    public float NormEpsilon { get; init; } = 1e-5f;
    public float RopeBase { get; init; } = 10000f;

    public int HeadDim => Dim / Heads;
    public int KvDim => KvHeads * HeadDim;
    /// <summary>Width of a token's queries, keys and values side by side (one product computes all three).</summary>
    public int QkvDim => Dim + 2 * KvDim;

    /// <summary>Throws a clear exception for shapes the model cannot have.</summary>
    public void Validate()
    {
        static void Positive(int value, string name)
        {
            if (value < 1) throw new ArgumentException($"{name} must be positive, got {value}");
        }
        Positive(VocabSize, nameof(VocabSize));
        Positive(Dim, nameof(Dim));
        Positive(Layers, nameof(Layers));
        Positive(Heads, nameof(Heads));
        Positive(KvHeads, nameof(KvHeads));
        Positive(Hidden, nameof(Hidden));
        Positive(Context, nameof(Context));
        if (Dim % Heads != 0) throw new ArgumentException($"Dim {Dim} is not a multiple of Heads {Heads}");
        if (Heads % KvHeads != 0) throw new ArgumentException($"Heads {Heads} cannot share KvHeads {KvHeads} evenly");
        if (HeadDim % 2 != 0) throw new ArgumentException($"head dimension {HeadDim} must be even for RoPE");
        if (!(NormEpsilon > 0)) throw new ArgumentException($"NormEpsilon must be positive, got {NormEpsilon}");
        if (!(RopeBase > 1)) throw new ArgumentException($"RopeBase must be above 1, got {RopeBase}");
        if (ParameterLayout.ParameterCount(this) > int.MaxValue)
            throw new ArgumentException($"a model of {ParameterLayout.ParameterCount(this)} parameters exceeds one array's limit");
    }
}
