using Loom.Models.Gguf;

namespace Loom.Tests;

/// <summary>The shape of a random-weight model built for architecture tests.</summary>
internal sealed record SyntheticModel
{
    public string Architecture { get; init; } = "llama";
    public int Embedding { get; init; } = 64;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    /// <summary>Per-head dimension written as attention.key_length/value_length; null leaves the default (embedding/heads).</summary>
    public int? KeyLength { get; init; }
    public int FeedForward { get; init; } = 96;
    public int Layers { get; init; } = 2;
    public int Context { get; init; } = 128;
    public bool TiedOutput { get; init; }
    public float FreqBase { get; init; } = 10000f;
    public string? RopeScaling { get; init; }
    public float RopeFactor { get; init; } = 1f;
    public int? RopeOriginalContext { get; init; }
    /// <summary>Adds a rope_freqs.weight tensor (Llama 3.1 style frequency divisors).</summary>
    public bool RopeFrequencyFactors { get; init; }
    public int Seed { get; init; } = 1;

    public override string ToString() =>
        $"{Architecture}{(TiedOutput ? " tied" : "")}{(KeyLength is int k ? $" head {k}" : "")}{(RopeScaling is null ? "" : $" {RopeScaling}×{RopeFactor}")}{(RopeFrequencyFactors ? " rope_freqs" : "")}";

    /// <summary>Builds the GGUF file (with stories260K's 512-token vocabulary so llama.cpp can load it too).</summary>
    public ModelGgufWriter Build()
    {
        using var stories = GgufFile.Open(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        const int vocab = 512;
        var layout = new SyntheticLayout(Architecture, Embedding, Heads, KvHeads, KeyLength ?? Embedding / Heads, FeedForward, Layers,
            vocab, Context, TiedOutput, NormEpsilon: 1e-5f, RopeBase: FreqBase, RopeFrequencyFactors);
        string a = Architecture;
        var w = new ModelGgufWriter().Set("general.architecture", a).Set("general.name", "synthetic " + a).TokenizerFrom(stories);
        layout.WriteHyperParameters((key, value) => w.Set(key, value));
        if (RopeScaling is string scaling)
        {
            w.Set($"{a}.rope.scaling.type", scaling).Set($"{a}.rope.scaling.factor", RopeFactor);
            if (RopeOriginalContext is int original) w.Set($"{a}.rope.scaling.original_context_length", (uint)original);
        }

        // Uniform values drawn in file order from one generator, so a seed fixes the whole model.
        var random = new Random(Seed);
        float[] Values(int count, float scale, float offset = 0) =>
            Enumerable.Range(0, count).Select(_ => offset + scale * (2 * random.NextSingle() - 1)).ToArray();
        foreach (var (name, role, dims) in layout.Tensors())
        {
            int count = (int)dims.Aggregate(1L, (x, y) => x * y);
            w.Tensor(name, dims, role switch
            {
                SyntheticRole.TokenEmbedding => Values(count, 1f),
                SyntheticRole.PositionEmbedding => Values(count, 0.5f),
                SyntheticRole.RopeFrequencies => Values(count, 3.5f, 4.5f),
                SyntheticRole.Norm => Values(count, 0.2f, 1f),
                SyntheticRole.Bias => Values(count, 0.1f),
                _ => Values(count, 1.5f / MathF.Sqrt(dims[0])),
            });
        }
        return w;
    }
}
