using Loom.Models.Gguf;

namespace Loom.Tests;

/// <summary>What a synthetic model's tensor is for; each factory picks the values for a role.</summary>
internal enum SyntheticRole { TokenEmbedding, PositionEmbedding, RopeFrequencies, Norm, Bias, Weight }

/// <summary>One tensor of a synthetic model: dims are ggml's (ne0 first), so a weight mapping n inputs to m outputs is [n, m].</summary>
internal readonly record struct SyntheticTensor(string Name, SyntheticRole Role, long[] Dims);

/// <summary>
/// The tensor names, shapes and hyper-parameter keys llama.cpp expects for each architecture the synthetic models cover
/// (llama, qwen2, qwen3, gpt2). Both model factories (<see cref="SyntheticModel"/> and the conformance
/// <see cref="Conformance.TestModelFactory"/>) build on this and differ only in how they choose values.
/// </summary>
internal sealed record SyntheticLayout(
    string Architecture,
    int Embedding,
    int Heads,
    int KvHeads,
    int HeadDim,
    int FeedForward,
    int Layers,
    int Vocab,
    int Context,
    bool TiedOutput,
    float NormEpsilon,
    float RopeBase,
    bool RopeFrequencyFactors = false)
{
    private bool Gpt2 => Architecture == "gpt2";

    /// <summary>The architecture's hyper-parameters; key/value_length only where they differ from the default embedding/heads.</summary>
    public void WriteHyperParameters(Action<string, GgufValue> set)
    {
        string a = Architecture;
        set($"{a}.context_length", GgufValue.Of((uint)Context));
        set($"{a}.embedding_length", GgufValue.Of((uint)Embedding));
        set($"{a}.feed_forward_length", GgufValue.Of((uint)FeedForward));
        set($"{a}.block_count", GgufValue.Of((uint)Layers));
        set($"{a}.attention.head_count", GgufValue.Of((uint)Heads));
        set($"{a}.attention.head_count_kv", GgufValue.Of((uint)KvHeads));
        set(Gpt2 ? $"{a}.attention.layer_norm_epsilon" : $"{a}.attention.layer_norm_rms_epsilon", GgufValue.Of(NormEpsilon));
        if (HeadDim != Embedding / Heads)
        {
            set($"{a}.attention.key_length", GgufValue.Of((uint)HeadDim));
            set($"{a}.attention.value_length", GgufValue.Of((uint)HeadDim));
        }
        if (!Gpt2)
        {
            set($"{a}.rope.freq_base", GgufValue.Of(RopeBase));
            set($"{a}.rope.dimension_count", GgufValue.Of((uint)HeadDim));
        }
    }

    /// <summary>Every tensor in file order.</summary>
    public IEnumerable<SyntheticTensor> Tensors()
    {
        int e = Embedding, qDim = Heads * HeadDim, kvDim = KvHeads * HeadDim, f = FeedForward;
        bool gpt2 = Gpt2, qwen2 = Architecture == "qwen2";

        SyntheticTensor Vector(string name, int n, SyntheticRole role) => new(name, role, [n]);
        IEnumerable<SyntheticTensor> Norm(string name)
        {
            yield return Vector(name + ".weight", e, SyntheticRole.Norm);
            if (gpt2) yield return Vector(name + ".bias", e, SyntheticRole.Bias);
        }
        IEnumerable<SyntheticTensor> Linear(string name, int inputs, int outputs, bool bias)
        {
            yield return new(name + ".weight", SyntheticRole.Weight, [inputs, outputs]);
            if (bias) yield return Vector(name + ".bias", outputs, SyntheticRole.Bias);
        }

        yield return new("token_embd.weight", SyntheticRole.TokenEmbedding, [e, Vocab]);
        if (gpt2) yield return new("position_embd.weight", SyntheticRole.PositionEmbedding, [e, Context]);
        if (RopeFrequencyFactors) yield return Vector("rope_freqs.weight", HeadDim / 2, SyntheticRole.RopeFrequencies);
        for (int i = 0; i < Layers; i++)
        {
            string p = $"blk.{i}.";
            var layer = Norm(p + "attn_norm");
            if (gpt2) layer = layer.Concat(Linear(p + "attn_qkv", e, qDim + 2 * kvDim, bias: true));
            else
                layer = layer.Concat(Linear(p + "attn_q", e, qDim, bias: qwen2))
                    .Concat(Linear(p + "attn_k", e, kvDim, bias: qwen2))
                    .Concat(Linear(p + "attn_v", e, kvDim, bias: qwen2));
            if (Architecture == "qwen3")
                layer = layer.Append(Vector(p + "attn_q_norm.weight", HeadDim, SyntheticRole.Norm))
                    .Append(Vector(p + "attn_k_norm.weight", HeadDim, SyntheticRole.Norm));
            layer = layer.Concat(Linear(p + "attn_output", qDim, e, bias: gpt2)).Concat(Norm(p + "ffn_norm"));
            if (!gpt2) layer = layer.Concat(Linear(p + "ffn_gate", e, f, bias: false));
            layer = layer.Concat(Linear(p + "ffn_up", e, f, bias: gpt2)).Concat(Linear(p + "ffn_down", f, e, bias: gpt2));
            foreach (var tensor in layer) yield return tensor;
        }
        foreach (var tensor in Norm("output_norm")) yield return tensor;
        if (!TiedOutput) yield return new("output.weight", SyntheticRole.Weight, [e, Vocab]);
    }
}
