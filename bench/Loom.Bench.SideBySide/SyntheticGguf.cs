using Loom.Core;
using Loom.Models.Gguf;

namespace Loom.Bench.SideBySide;

/// <summary>
/// Writes a random-weight GGUF v3 file with a model's exact tensor shapes: F16 matrices, F32 norms and biases, and a
/// synthetic byte-level BPE vocabulary of the model's size, so llama.cpp and Loom both load it. Tensors are generated
/// while <see cref="GgufWriter"/> writes them, so even a 1B-parameter file never sits in memory whole.
/// </summary>
internal static class SyntheticGguf
{
    private sealed record TensorSpec(string Name, long[] Dims, GgmlType Type, float Scale, float Offset)
    {
        public long Elements => Dims.Aggregate(1L, (a, b) => a * b);
    }

    public static void Write(ModelShape shape, string path)
    {
        var writer = new GgufWriter();
        foreach (var (key, value) in Metadata(shape)) writer.AddMetadata(key, value);
        ulong seed = 1;
        foreach (var t in Tensors(shape))
        {
            ulong tensorSeed = seed++;
            writer.AddTensor(t.Name, t.Type, t.Dims, stream => WriteData(stream, t, tensorSeed));
        }
        writer.WriteTo(path);
    }

    private static List<TensorSpec> Tensors(ModelShape s)
    {
        int e = s.Embedding, q = s.Heads * s.HeadDim, kv = s.KvHeads * s.HeadDim, f = s.FeedForward;
        var list = new List<TensorSpec>();
        // Uniform in ±scale with scale ~ 1/sqrt(fan-in) keeps activations O(1) through every layer, as trained weights do.
        void Matrix(string name, int cols, int rows) => list.Add(new(name, [cols, rows], GgmlType.F16, 1f / MathF.Sqrt(cols), 0));
        void Vector(string name, int n, float scale, float offset) => list.Add(new(name, [n], GgmlType.F32, scale, offset));

        Matrix("token_embd.weight", e, s.Vocab);
        for (int i = 0; i < s.Layers; i++)
        {
            string p = $"blk.{i}.";
            Vector(p + "attn_norm.weight", e, 0.1f, 1f);
            Matrix(p + "attn_q.weight", e, q);
            Matrix(p + "attn_k.weight", e, kv);
            Matrix(p + "attn_v.weight", e, kv);
            if (s.QkvBias)
            {
                Vector(p + "attn_q.bias", q, 0.1f, 0);
                Vector(p + "attn_k.bias", kv, 0.1f, 0);
                Vector(p + "attn_v.bias", kv, 0.1f, 0);
            }
            Matrix(p + "attn_output.weight", q, e);
            Vector(p + "ffn_norm.weight", e, 0.1f, 1f);
            Matrix(p + "ffn_gate.weight", e, f);
            Matrix(p + "ffn_up.weight", e, f);
            Matrix(p + "ffn_down.weight", f, e);
        }
        Vector("output_norm.weight", e, 0.1f, 1f);
        // All three published models tie the output projection to the embedding table: no output.weight.
        return list;
    }

    private static List<(string Key, GgufValue Value)> Metadata(ModelShape s)
    {
        string a = s.Architecture;
        var (tokens, types, merges) = Vocabulary(s.Vocab);
        int endOfText = s.Vocab - 1;
        return
        [
            ("general.architecture", GgufValue.Of(a)),
            ("general.name", GgufValue.Of($"random {s.Name}")),
            ("general.file_type", GgufValue.Of(1u)), // mostly F16
            ($"{a}.context_length", GgufValue.Of((uint)s.Context)),
            ($"{a}.embedding_length", GgufValue.Of((uint)s.Embedding)),
            ($"{a}.feed_forward_length", GgufValue.Of((uint)s.FeedForward)),
            ($"{a}.block_count", GgufValue.Of((uint)s.Layers)),
            ($"{a}.attention.head_count", GgufValue.Of((uint)s.Heads)),
            ($"{a}.attention.head_count_kv", GgufValue.Of((uint)s.KvHeads)),
            ($"{a}.attention.layer_norm_rms_epsilon", GgufValue.Of(1e-5f)),
            ($"{a}.rope.freq_base", GgufValue.Of(s.RopeBase)),
            ($"{a}.rope.dimension_count", GgufValue.Of((uint)s.HeadDim)),
            ($"{a}.vocab_size", GgufValue.Of((uint)s.Vocab)),
            ("tokenizer.ggml.model", GgufValue.Of("gpt2")),
            ("tokenizer.ggml.pre", GgufValue.Of("default")),
            ("tokenizer.ggml.tokens", GgufValue.Of(tokens)),
            ("tokenizer.ggml.token_type", GgufValue.Of(types)),
            ("tokenizer.ggml.merges", GgufValue.Of(merges)),
            ("tokenizer.ggml.bos_token_id", GgufValue.Of((uint)endOfText)),
            ("tokenizer.ggml.eos_token_id", GgufValue.Of((uint)endOfText)),
        ];
    }

    /// <summary>
    /// A byte-level BPE vocabulary of exactly <paramref name="size"/> tokens: the 256 byte symbols (GPT-2's printable
    /// byte mapping), then every two-symbol merge, then three-symbol merges, and one end-of-text control token last.
    /// </summary>
    private static (string[] Tokens, int[] Types, string[] Merges) Vocabulary(int size)
    {
        var symbols = ByteSymbols();
        var tokens = new string[size];
        var types = new int[size];
        var merges = new List<string>(size);
        int n = 0;
        for (int b = 0; b < 256; b++) tokens[n++] = symbols[b];
        for (int i = 0; i < 256 && n < size - 1; i++)
            for (int j = 0; j < 256 && n < size - 1; j++)
            {
                tokens[n++] = symbols[i] + symbols[j];
                merges.Add(symbols[i] + " " + symbols[j]);
            }
        for (int i = 0; i < 256 && n < size - 1; i++)
            for (int j = 0; j < 256 && n < size - 1; j++)
                for (int k = 0; k < 256 && n < size - 1; k++)
                {
                    tokens[n++] = symbols[i] + symbols[j] + symbols[k];
                    merges.Add(symbols[i] + symbols[j] + " " + symbols[k]);
                }
        Array.Fill(types, 1); // normal
        tokens[size - 1] = "<|endoftext|>";
        types[size - 1] = 3; // control
        return (tokens, types, merges.ToArray());
    }

    /// <summary>GPT-2's byte→character table: printable Latin-1 bytes stand for themselves, the rest map to U+0100 on.</summary>
    private static string[] ByteSymbols()
    {
        var symbols = new string[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            symbols[b] = ((char)(printable ? b : next++)).ToString();
        }
        return symbols;
    }

    private static void WriteData(Stream w, TensorSpec t, ulong seed)
    {
        const int chunk = 1 << 16;
        var bytes = new byte[chunk * 4];
        ulong state = seed * 0x9E3779B97F4A7C15UL | 1;
        for (long done = 0; done < t.Elements;)
        {
            int count = (int)Math.Min(chunk, t.Elements - done);
            for (int i = 0; i < count; i++)
            {
                // xorshift64*: fast, and plenty random for benchmark weights.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                float unit = ((state * 2685821657736338717UL) >> 40) * (1f / (1 << 24)); // [0, 1)
                float value = t.Offset + t.Scale * (2 * unit - 1);
                if (t.Type == GgmlType.F16) BitConverter.TryWriteBytes(bytes.AsSpan(i * 2), (Half)value);
                else BitConverter.TryWriteBytes(bytes.AsSpan(i * 4), value);
            }
            w.Write(bytes, 0, count * (t.Type == GgmlType.F16 ? 2 : 4));
            done += count;
        }
    }
}
