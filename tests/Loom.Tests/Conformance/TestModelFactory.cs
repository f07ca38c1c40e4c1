using System.Runtime.InteropServices;
using Loom.Core;
using Loom.Models.Gguf;

namespace Loom.Tests.Conformance;

/// <summary>The shape of one generated test model.</summary>
public sealed record TestModelSpec(
    string Name,
    string Architecture,
    string VocabularyName,
    int Embedding,
    int Layers,
    int Heads,
    int KvHeads,
    int HeadDim,
    int FeedForward,
    bool TiedOutput,
    int ContextLength = 512,
    float RopeBase = 10000f,
    float NormEpsilon = 1e-5f)
{
    public Vocabulary Vocabulary => Vocabularies.ByName(VocabularyName);
}

/// <summary>
/// Writes small random-weight GGUF models with the tensor names, shapes and metadata llama.cpp expects for each
/// architecture. Dimensions are written ggml-style (ne0, the contiguous one, first), so a PyTorch [out, in] weight has
/// dims [in, out]. Every row length is a multiple of 256 so llama.cpp's K-quants apply. Weights are seeded normals
/// scaled so attention is peaked and logits spread over several units, far from degenerate.
/// </summary>
public static class TestModelFactory
{
    public static readonly TestModelSpec Llama = new("llama-spm", "llama", "llama-spm",
        Embedding: 256, Layers: 2, Heads: 8, KvHeads: 4, HeadDim: 32, FeedForward: 768, TiedOutput: false);

    public static readonly TestModelSpec LlamaBpe = new("llama-bpe", "llama", "llama-bpe",
        Embedding: 256, Layers: 2, Heads: 8, KvHeads: 2, HeadDim: 32, FeedForward: 512, TiedOutput: true, RopeBase: 500000f);

    public static readonly TestModelSpec Qwen2 = new("qwen2", "qwen2", "qwen2",
        Embedding: 256, Layers: 2, Heads: 8, KvHeads: 2, HeadDim: 32, FeedForward: 512, TiedOutput: true, RopeBase: 1000000f, NormEpsilon: 1e-6f);

    // head_dim 128 with 4 heads makes the query width (512) differ from the embedding (256): key_length must be honoured.
    public static readonly TestModelSpec Qwen3 = new("qwen3", "qwen3", "llama-bpe",
        Embedding: 256, Layers: 2, Heads: 4, KvHeads: 2, HeadDim: 128, FeedForward: 768, TiedOutput: true, RopeBase: 1000000f, NormEpsilon: 1e-6f);

    public static readonly TestModelSpec Gpt2 = new("gpt2", "gpt2", "gpt2",
        Embedding: 256, Layers: 2, Heads: 4, KvHeads: 4, HeadDim: 64, FeedForward: 1024, TiedOutput: false, ContextLength: 256);

    public static IReadOnlyList<TestModelSpec> All { get; } = [Llama, LlamaBpe, Qwen2, Qwen3, Gpt2];

    public static TestModelSpec ByName(string name) =>
        All.FirstOrDefault(s => s.Name == name) ?? throw new ArgumentException($"unknown test model '{name}'");

    /// <summary>Writes the model as F32 (or F16 for every matrix) to <paramref name="path"/>.</summary>
    public static void Write(TestModelSpec spec, string path, int seed = 1, bool f16Matrices = false)
    {
        var vocab = spec.Vocabulary;
        string arch = spec.Architecture;
        int n = spec.Embedding, qWidth = spec.Heads * spec.HeadDim, kvWidth = spec.KvHeads * spec.HeadDim;
        var w = new GgufWriter();
        w.Add("general.architecture", arch);
        w.Add("general.name", $"loom-test-{spec.Name}");
        w.Add("general.file_type", f16Matrices ? 1u : 0u);
        w.Add($"{arch}.context_length", (uint)spec.ContextLength);
        w.Add($"{arch}.embedding_length", (uint)n);
        w.Add($"{arch}.block_count", (uint)spec.Layers);
        w.Add($"{arch}.feed_forward_length", (uint)spec.FeedForward);
        w.Add($"{arch}.attention.head_count", (uint)spec.Heads);
        w.Add($"{arch}.attention.head_count_kv", (uint)spec.KvHeads);
        w.Add($"{arch}.vocab_size", (uint)vocab.Count);
        if (arch == "gpt2")
        {
            w.Add($"{arch}.attention.layer_norm_epsilon", spec.NormEpsilon);
        }
        else
        {
            w.Add($"{arch}.attention.layer_norm_rms_epsilon", spec.NormEpsilon);
            w.Add($"{arch}.rope.freq_base", spec.RopeBase);
            w.Add($"{arch}.rope.dimension_count", (uint)spec.HeadDim);
        }
        if (arch == "qwen3")
        {
            w.Add($"{arch}.attention.key_length", (uint)spec.HeadDim);
            w.Add($"{arch}.attention.value_length", (uint)spec.HeadDim);
        }
        vocab.WriteTo(w);

        var tensors = new TensorSink(w, seed, f16Matrices);
        // A tied head makes token_embd the output projection too, so it gets the output's scale.
        tensors.Matrix("token_embd.weight", n, vocab.Count, 0.12f);
        if (arch == "gpt2") tensors.Matrix("position_embd.weight", n, spec.ContextLength, 0.1f);

        for (int layer = 0; layer < spec.Layers; layer++)
        {
            string blk = $"blk.{layer}.";
            tensors.Norm(blk + "attn_norm.weight", n);
            if (arch == "gpt2")
            {
                tensors.Bias(blk + "attn_norm.bias", n);
                tensors.Matrix(blk + "attn_qkv.weight", n, qWidth + 2 * kvWidth, 0.1f);
                tensors.Bias(blk + "attn_qkv.bias", qWidth + 2 * kvWidth);
                tensors.Matrix(blk + "attn_output.weight", qWidth, n, 0.05f);
                tensors.Bias(blk + "attn_output.bias", n);
                tensors.Norm(blk + "ffn_norm.weight", n);
                tensors.Bias(blk + "ffn_norm.bias", n);
                tensors.Matrix(blk + "ffn_up.weight", n, spec.FeedForward, 0.05f);
                tensors.Bias(blk + "ffn_up.bias", spec.FeedForward);
                tensors.Matrix(blk + "ffn_down.weight", spec.FeedForward, n, 0.05f);
                tensors.Bias(blk + "ffn_down.bias", n);
                continue;
            }
            tensors.Matrix(blk + "attn_q.weight", n, qWidth, 0.1f);
            tensors.Matrix(blk + "attn_k.weight", n, kvWidth, 0.1f);
            tensors.Matrix(blk + "attn_v.weight", n, kvWidth, 0.05f);
            if (arch == "qwen2")
            {
                tensors.Bias(blk + "attn_q.bias", qWidth);
                tensors.Bias(blk + "attn_k.bias", kvWidth);
                tensors.Bias(blk + "attn_v.bias", kvWidth);
            }
            if (arch == "qwen3")
            {
                tensors.Norm(blk + "attn_q_norm.weight", spec.HeadDim);
                tensors.Norm(blk + "attn_k_norm.weight", spec.HeadDim);
            }
            tensors.Matrix(blk + "attn_output.weight", qWidth, n, 0.05f);
            tensors.Norm(blk + "ffn_norm.weight", n);
            tensors.Matrix(blk + "ffn_gate.weight", n, spec.FeedForward, 0.05f);
            tensors.Matrix(blk + "ffn_up.weight", n, spec.FeedForward, 0.05f);
            tensors.Matrix(blk + "ffn_down.weight", spec.FeedForward, n, 0.05f);
        }

        tensors.Norm("output_norm.weight", n);
        if (arch == "gpt2") tensors.Bias("output_norm.bias", n);
        if (!spec.TiedOutput) tensors.Matrix("output.weight", n, vocab.Count, 0.12f);

        w.WriteTo(path);
    }

    /// <summary>Adds generated tensors; each draws from its own generator (seed and name), so values do not depend on order.</summary>
    private sealed class TensorSink(GgufWriter writer, int seed, bool f16Matrices)
    {
        /// <summary>A weight mapping <paramref name="inputs"/> to <paramref name="outputs"/>: dims [in, out], one row per output.</summary>
        public void Matrix(string name, int inputs, int outputs, float std)
        {
            var type = f16Matrices ? GgmlType.F16 : GgmlType.F32;
            writer.AddTensor(name, type, [inputs, outputs], stream =>
            {
                var random = new GaussianSource(seed, name);
                var row = new float[inputs];
                var half = new Half[inputs];
                for (int r = 0; r < outputs; r++)
                {
                    for (int i = 0; i < inputs; i++) row[i] = std * random.Next();
                    if (type == GgmlType.F32)
                    {
                        stream.Write(MemoryMarshal.AsBytes(row.AsSpan()));
                    }
                    else
                    {
                        for (int i = 0; i < inputs; i++) half[i] = (Half)row[i];
                        stream.Write(MemoryMarshal.AsBytes(half.AsSpan()));
                    }
                }
            });
        }

        /// <summary>A norm's scale: around 1 with some spread, so a kernel that ignores it is caught.</summary>
        public void Norm(string name, int length) => writer.AddF32(name, [length], Values(name, length, 1f, 0.2f));

        public void Bias(string name, int length) => writer.AddF32(name, [length], Values(name, length, 0f, 0.1f));

        private float[] Values(string name, int length, float mean, float std)
        {
            var random = new GaussianSource(seed, name);
            var values = new float[length];
            for (int i = 0; i < length; i++) values[i] = mean + std * random.Next();
            return values;
        }
    }

    /// <summary>Standard normal samples (Box-Muller) from a generator seeded by the model seed and a stable hash of the name.</summary>
    private sealed class GaussianSource(int seed, string name)
    {
        private readonly Random _random = new(HashCode(seed, name));
        private float? _spare;

        public float Next()
        {
            if (_spare is { } s)
            {
                _spare = null;
                return s;
            }
            double u1 = 1.0 - _random.NextDouble(), u2 = _random.NextDouble();
            double radius = Math.Sqrt(-2.0 * Math.Log(u1));
            _spare = (float)(radius * Math.Sin(2 * Math.PI * u2));
            return (float)(radius * Math.Cos(2 * Math.PI * u2));
        }

        // FNV-1a: string.GetHashCode is randomised per process, which would make the models differ between runs.
        private static int HashCode(int seed, string name)
        {
            uint h = 2166136261u ^ (uint)seed;
            foreach (char c in name) h = (h ^ c) * 16777619u;
            return (int)(h & 0x7FFFFFFF);
        }
    }
}
