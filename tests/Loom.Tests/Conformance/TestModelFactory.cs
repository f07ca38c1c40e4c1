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
/// Writes small random-weight GGUF models, laid out by <see cref="SyntheticLayout"/> (the tensor names, shapes and
/// metadata llama.cpp expects for each architecture) with real vocabularies. Dimensions are written ggml-style (ne0, the contiguous one, first), so a PyTorch [out, in] weight has
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
        var layout = new SyntheticLayout(arch, spec.Embedding, spec.Heads, spec.KvHeads, spec.HeadDim, spec.FeedForward, spec.Layers,
            vocab.Count, spec.ContextLength, spec.TiedOutput, spec.NormEpsilon, spec.RopeBase);
        var w = new GgufWriter();
        w.Add("general.architecture", arch);
        w.Add("general.name", $"loom-test-{spec.Name}");
        w.Add("general.file_type", f16Matrices ? 1u : 0u);
        w.Add($"{arch}.vocab_size", (uint)vocab.Count);
        layout.WriteHyperParameters((key, value) => w.AddMetadata(key, value));
        vocab.WriteTo(w);

        var tensors = new TensorSink(w, seed, f16Matrices);
        foreach (var (name, role, dims) in layout.Tensors())
        {
            switch (role)
            {
                case SyntheticRole.Norm: tensors.Norm(name, (int)dims[0]); break;
                case SyntheticRole.Bias: tensors.Bias(name, (int)dims[0]); break;
                case SyntheticRole.TokenEmbedding or SyntheticRole.PositionEmbedding or SyntheticRole.Weight:
                    tensors.Matrix(name, (int)dims[0], (int)dims[1], Std(name));
                    break;
                default: throw new NotSupportedException($"conformance models have no {role} tensor ({name})");
            }
        }
        w.WriteTo(path);
    }

    /// <summary>
    /// Each matrix's spread: queries and keys wider than values and the rest, so attention is peaked. A tied head makes
    /// token_embd the output projection too, so it gets the output's scale.
    /// </summary>
    private static float Std(string name) => name switch
    {
        "token_embd.weight" or "output.weight" => 0.12f,
        "position_embd.weight" => 0.1f,
        _ when name.EndsWith(".attn_q.weight", StringComparison.Ordinal) || name.EndsWith(".attn_k.weight", StringComparison.Ordinal)
            || name.EndsWith(".attn_qkv.weight", StringComparison.Ordinal) => 0.1f,
        _ => 0.05f,
    };

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
