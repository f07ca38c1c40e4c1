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
/// scaled so attention is peaked and the output is decisive, as a trained model's is, rather than flat: see
/// <see cref="Std"/>, <see cref="UnembeddingRowSpread"/> and <see cref="TensorSink.Norm"/>.
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
                    bool unembedding = name == "output.weight" || (name == "token_embd.weight" && spec.TiedOutput);
                    tensors.Matrix(name, (int)dims[0], (int)dims[1], Std(name), unembedding ? UnembeddingRowSpread : 0f);
                    break;
                default: throw new NotSupportedException($"conformance models have no {role} tensor ({name})");
            }
        }
        w.WriteTo(path);
    }

    /// <summary>
    /// Each matrix's spread. Queries and keys are wide, so attention is peaked. Values, attention outputs and the
    /// feed-forward matrices are narrow (0.02), so the residual stream carries mostly the token embedding and the blocks
    /// add a context-dependent part (it still moves the argmax at over 80% of positions). Any two builds (llama.cpp's
    /// AVX2 and AVX-512 ones included) differ in the odd activation rounding, and through the attention each such
    /// difference reaches every later position of its sequence at ~0.1% of the logit range: with wide blocks (0.05) and
    /// equal unembedding norms that reordered the top two logits at 0.8% of positions; with these models, 0.4% (and
    /// llama.cpp's two builds 0.2%). A tied head makes token_embd the output projection too, so it gets the output's scale.
    /// </summary>
    private static float Std(string name) => name switch
    {
        "token_embd.weight" or "output.weight" => 0.12f,
        "position_embd.weight" => 0.1f,
        _ when name.EndsWith(".attn_q.weight", StringComparison.Ordinal) || name.EndsWith(".attn_k.weight", StringComparison.Ordinal)
            || name.EndsWith(".attn_qkv.weight", StringComparison.Ordinal) => 0.1f,
        _ => 0.02f,
    };

    /// <summary>
    /// The unembedding's rows have log-normal norms (this spread of the log, mean square kept), as a trained model's do
    /// with token frequency. With equal norms, the logits at every position are i.i.d. normals over tens of thousands of
    /// tokens, whose top two lie within 0.1% of the range at ~4% of positions and whose top token gets ~1% of the
    /// probability; with this spread the top token stands out (mean top probability ~0.7) and near-ties halve.
    /// </summary>
    private const float UnembeddingRowSpread = 0.5f;

    /// <summary>Adds generated tensors; each draws from its own generator (seed and name), so values do not depend on order.</summary>
    private sealed class TensorSink(GgufWriter writer, int seed, bool f16Matrices)
    {
        /// <summary>
        /// A weight mapping <paramref name="inputs"/> to <paramref name="outputs"/>: dims [in, out], one row per output,
        /// each row's scale log-normal with <paramref name="rowSpread"/> (0: all rows <paramref name="std"/>).
        /// </summary>
        public void Matrix(string name, int inputs, int outputs, float std, float rowSpread)
        {
            var type = f16Matrices ? GgmlType.F16 : GgmlType.F32;
            writer.AddTensor(name, type, [inputs, outputs], stream =>
            {
                var random = new GaussianSource(seed, name);
                var rowScales = new GaussianSource(seed, name + "#rows");
                var row = new float[inputs];
                var half = new Half[inputs];
                for (int r = 0; r < outputs; r++)
                {
                    // exp(s·z - s²) has mean square 1, so the matrix keeps its overall scale.
                    float rowStd = rowSpread == 0 ? std : std * MathF.Exp(rowSpread * rowScales.Next() - rowSpread * rowSpread);
                    for (int i = 0; i < inputs; i++) row[i] = rowStd * random.Next();
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

        /// <summary>
        /// A norm's scale: around 1 with some spread, so a kernel that ignores it is caught. The final norm's scales are
        /// centred on zero instead: the residual stream is mostly the current token's embedding, so through positive
        /// scales a tied head would just predict its input token.
        /// </summary>
        public void Norm(string name, int length) =>
            writer.AddF32(name, [length], name == "output_norm.weight" ? Values(name, length, 0f, 1f) : Values(name, length, 1f, 0.2f));

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
