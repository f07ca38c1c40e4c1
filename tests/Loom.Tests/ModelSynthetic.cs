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
        var random = new Random(Seed);
        int e = Embedding, headDim = KeyLength ?? e / Heads, qDim = Heads * headDim, kvDim = KvHeads * headDim, f = FeedForward;
        string a = Architecture;
        bool gpt2 = a == "gpt2";

        float[] Values(int count, float scale, float offset = 0) =>
            Enumerable.Range(0, count).Select(_ => offset + scale * (2 * random.NextSingle() - 1)).ToArray();
        var w = new ModelGgufWriter().Set("general.architecture", a).Set("general.name", "synthetic " + a).TokenizerFrom(stories);
        void Matrix(string name, int cols, int rows) => w.Tensor(name, [cols, rows], Values(cols * rows, 1.5f / MathF.Sqrt(cols)));
        void Vector(string name, int n, float scale, float offset = 0) => w.Tensor(name, [n], Values(n, scale, offset));
        void Norm(string name)
        {
            Vector(name + ".weight", e, 0.2f, 1f);
            if (gpt2) Vector(name + ".bias", e, 0.1f);
        }
        void Linear(string name, int cols, int rows, bool bias)
        {
            Matrix(name + ".weight", cols, rows);
            if (bias) Vector(name + ".bias", rows, 0.1f);
        }

        w.Set($"{a}.context_length", (uint)Context)
            .Set($"{a}.embedding_length", (uint)e)
            .Set($"{a}.feed_forward_length", (uint)f)
            .Set($"{a}.block_count", (uint)Layers)
            .Set($"{a}.attention.head_count", (uint)Heads)
            .Set($"{a}.attention.head_count_kv", (uint)KvHeads)
            .Set(gpt2 ? $"{a}.attention.layer_norm_epsilon" : $"{a}.attention.layer_norm_rms_epsilon", 1e-5f);
        if (KeyLength is int key) w.Set($"{a}.attention.key_length", (uint)key).Set($"{a}.attention.value_length", (uint)key);
        if (!gpt2)
        {
            w.Set($"{a}.rope.freq_base", FreqBase);
            w.Set($"{a}.rope.dimension_count", (uint)headDim);
        }
        if (RopeScaling is string scaling)
        {
            w.Set($"{a}.rope.scaling.type", scaling).Set($"{a}.rope.scaling.factor", RopeFactor);
            if (RopeOriginalContext is int original) w.Set($"{a}.rope.scaling.original_context_length", (uint)original);
        }

        w.Tensor("token_embd.weight", [e, vocab], Values(e * vocab, 1f));
        if (gpt2) w.Tensor("position_embd.weight", [e, Context], Values(e * Context, 0.5f));
        if (RopeFrequencyFactors) Vector("rope_freqs.weight", headDim / 2, 3.5f, 4.5f);
        for (int i = 0; i < Layers; i++)
        {
            string p = $"blk.{i}.";
            Norm(p + "attn_norm");
            if (gpt2) Linear(p + "attn_qkv", e, qDim + 2 * kvDim, bias: true);
            else
            {
                Linear(p + "attn_q", e, qDim, bias: a == "qwen2");
                Linear(p + "attn_k", e, kvDim, bias: a == "qwen2");
                Linear(p + "attn_v", e, kvDim, bias: a == "qwen2");
            }
            if (a == "qwen3")
            {
                Vector(p + "attn_q_norm.weight", headDim, 0.2f, 1f);
                Vector(p + "attn_k_norm.weight", headDim, 0.2f, 1f);
            }
            Linear(p + "attn_output", qDim, e, bias: gpt2);
            Norm(p + "ffn_norm");
            if (!gpt2) Linear(p + "ffn_gate", e, f, bias: false);
            Linear(p + "ffn_up", e, f, bias: gpt2);
            Linear(p + "ffn_down", f, e, bias: gpt2);
        }
        Norm("output_norm");
        if (!TiedOutput) Linear("output", e, vocab, bias: false);
        return w;
    }
}
