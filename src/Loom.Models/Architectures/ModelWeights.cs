using Loom.Core;
using Loom.Core.IO;
using Loom.Core.Kernels;
using Loom.Models.Gguf;

namespace Loom.Models.Architectures;

/// <summary>A linear layer y = W·x (+ b); W stays in the memory map (interleaved in place where that helps), the optional bias is a small float copy.</summary>
public sealed class Linear(WeightMatrix weight, float[]? bias)
{
    public WeightMatrix Weight { get; } = weight;
    public float[]? Bias { get; } = bias;
    public int InputSize => Weight.Cols;
    public int OutputSize => Weight.Rows;
}

/// <summary>Scale (and for LayerNorm, shift) of a normalisation, as floats.</summary>
public sealed class NormWeights(float[] weight, float[]? bias)
{
    public float[] Weight { get; } = weight;
    public float[]? Bias { get; } = bias;
}

public sealed class LayerWeights
{
    public required NormWeights AttentionNorm { get; init; }
    /// <summary>Separate projections, or null when the file has a fused <see cref="QueryKeyValue"/>.</summary>
    public Linear? Query { get; init; }
    public Linear? Key { get; init; }
    public Linear? Value { get; init; }
    /// <summary>Fused projection whose output per token is [q | k | v] (GPT-2 style attn_qkv).</summary>
    public Linear? QueryKeyValue { get; init; }
    /// <summary>Per-head RMSNorm weights applied to queries/keys before RoPE (Qwen3), or null.</summary>
    public float[]? QueryNorm { get; init; }
    public float[]? KeyNorm { get; init; }
    public required Linear AttentionOutput { get; init; }
    public required NormWeights FeedForwardNorm { get; init; }
    /// <summary>Gate projection of a gated FFN, null for a plain one.</summary>
    public Linear? Gate { get; init; }
    public required Linear Up { get; init; }
    public required Linear Down { get; init; }
}

/// <summary>All tensors of a model, bound to the GGUF memory map and checked against the configuration.</summary>
public sealed class ModelWeights
{
    public required WeightMatrix TokenEmbedding { get; init; }
    /// <summary>Learned absolute positions (GPT-2), rows = positions, or null.</summary>
    public WeightMatrix? PositionEmbedding { get; init; }
    public required NormWeights OutputNorm { get; init; }
    /// <summary>The LM head: output.weight, or token_embd.weight when the file ties them.</summary>
    public required Linear Output { get; init; }
    /// <summary>Per-pair RoPE frequency divisors (rope_freqs.weight, Llama 3.1 style scaling), or null.</summary>
    public float[]? RopeFrequencyFactors { get; init; }
    public required LayerWeights[] Layers { get; init; }

    /// <param name="arena">
    /// Where the matrices that every token multiplies are copied (see <see cref="WeightArena"/>), or null to leave them
    /// in the memory map; the lookup-only tables (see <see cref="LookupOnly"/>) stay in the map either way.
    /// </param>
    public static ModelWeights Bind(GgufFile file, ModelConfig config, WeightArena? arena = null)
    {
        var binder = new Binder(file, arena);
        var spec = config.Spec;
        int embedding = config.EmbeddingLength, vocab = config.VocabSize;
        bool layerNorm = spec.Norm == NormKind.LayerNorm;

        NormWeights Norm(string name) => new(
            binder.Vector(name + ".weight", embedding),
            layerNorm ? binder.Vector(name + ".bias", embedding) : binder.OptionalVector(name + ".bias", embedding));

        var layers = new LayerWeights[config.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            string p = $"blk.{i}.";
            bool fused = file.FindTensor(p + "attn_qkv.weight") is not null;
            bool gated = spec.FeedForward == FeedForwardKind.GatedSilu;
            layers[i] = new LayerWeights
            {
                AttentionNorm = Norm(p + "attn_norm"),
                Query = fused ? null : binder.Linear(p + "attn_q", embedding, config.QueryDim),
                Key = fused ? null : binder.Linear(p + "attn_k", embedding, config.KeyValueDim),
                Value = fused ? null : binder.Linear(p + "attn_v", embedding, config.ValueDim),
                QueryKeyValue = fused ? binder.Linear(p + "attn_qkv", embedding, config.QueryDim + config.KeyValueDim + config.ValueDim) : null,
                QueryNorm = spec.QkNorm ? binder.Vector(p + "attn_q_norm.weight", config.KeyLength) : null,
                KeyNorm = spec.QkNorm ? binder.Vector(p + "attn_k_norm.weight", config.KeyLength) : null,
                AttentionOutput = binder.Linear(p + "attn_output", config.HeadCount * config.ValueLength, embedding),
                FeedForwardNorm = Norm(p + "ffn_norm"),
                Gate = gated ? binder.Linear(p + "ffn_gate", embedding, config.FeedForwardLength) : null,
                Up = binder.Linear(p + "ffn_up", embedding, config.FeedForwardLength),
                Down = binder.Linear(p + "ffn_down", config.FeedForwardLength, embedding),
            };
        }

        var tokenEmbedding = binder.Matrix("token_embd.weight", embedding, vocab);
        var output = TiedOutput(file)
            ? new Linear(tokenEmbedding, binder.OptionalVector("output.bias", vocab))
            : binder.Linear("output", embedding, vocab);
        return new ModelWeights
        {
            TokenEmbedding = tokenEmbedding,
            PositionEmbedding = spec.LearnedPositions
                ? binder.Matrix("position_embd.weight", embedding, binder.Rows("position_embd.weight"))
                : null,
            OutputNorm = Norm("output_norm"),
            Output = output,
            RopeFrequencyFactors = spec.Rope == RopeKind.None ? null : binder.OptionalVector("rope_freqs.weight", config.RopeDimensionCount / 2),
            Layers = layers,
        };
    }

    /// <summary>Whether the file has no output.weight, so that the token embedding is the output projection too.</summary>
    public static bool TiedOutput(GgufFile file) => file.FindTensor("output.weight") is null;

    /// <summary>
    /// Tables a token only looks rows up in (an untied token embedding, learned positions): they stay in the memory map,
    /// since copying them into an arena would make all their rows resident.
    /// </summary>
    private static bool LookupOnly(GgufFile file, string name) =>
        name == "position_embd.weight" || (name == "token_embd.weight" && !TiedOutput(file));

    /// <summary>An upper bound on the bytes <see cref="Bind"/> copies into an arena: every two-dimensional tensor but the lookup-only tables, each on its cache line.</summary>
    public static long ArenaBytes(GgufFile file) =>
        file.Tensors.Where(t => t.Dimensions.Length >= 2 && !LookupOnly(file, t.Name)).Sum(t => t.ByteSize + 64);

    /// <summary>Looks tensors up by name and checks their shapes, so that every error names the tensor at fault.</summary>
    private sealed unsafe class Binder(GgufFile file, WeightArena? arena)
    {
        private GgufTensorInfo Require(string name, long[] shape) =>
            Find(name, shape) ?? throw new ModelFormatException($"{file.Path}: tensor '{name}' is missing");

        private GgufTensorInfo? Find(string name, long[] shape)
        {
            var tensor = file.FindTensor(name);
            if (tensor is null) return null;
            // Trailing dimensions of 1 carry no information (a writer may store a vector as [n, 1]).
            var dims = tensor.Dimensions.AsEnumerable().Reverse().SkipWhile(d => d == 1).Reverse().ToArray();
            if (dims.Length == 0) dims = [1];
            if (!dims.SequenceEqual(shape))
                throw new ModelFormatException(
                    $"{file.Path}: tensor '{name}' has shape [{string.Join(", ", tensor.Dimensions)}], expected [{string.Join(", ", shape)}]");
            return tensor;
        }

        public int Rows(string name)
        {
            var tensor = file.FindTensor(name) ?? throw new ModelFormatException($"{file.Path}: tensor '{name}' is missing");
            if (tensor.Dimensions.Length != 2 || tensor.Dimensions[1] > int.MaxValue)
                throw new ModelFormatException($"{file.Path}: tensor '{name}' has shape [{string.Join(", ", tensor.Dimensions)}], expected 2 dimensions");
            return (int)tensor.Dimensions[1];
        }

        /// <summary>
        /// A [cols, rows] GGUF tensor (PyTorch [rows, cols]) as a matrix of <paramref name="rows"/> output rows; unless it
        /// is only looked up, it goes to the arena, when there is one.
        /// </summary>
        public WeightMatrix Matrix(string name, int cols, int rows)
        {
            var tensor = Require(name, [cols, rows]);
            return file.IsPrivateCopy
                ? WeightMatrix.CreateOptimized(tensor.Type, file.DataPointer(tensor), rows, cols, LookupOnly(file, name) ? null : arena)
                : new WeightMatrix(tensor.Type, file.DataPointer(tensor), rows, cols);
        }

        public Linear Linear(string prefix, int inputSize, int outputSize) =>
            new(Matrix(prefix + ".weight", inputSize, outputSize), OptionalVector(prefix + ".bias", outputSize));

        public float[] Vector(string name, int length) => Read(Require(name, [length]), length);

        public float[]? OptionalVector(string name, int length)
        {
            var tensor = Find(name, [length]);
            return tensor is null ? null : Read(tensor, length);
        }

        private float[] Read(GgufTensorInfo tensor, int length)
        {
            var values = new float[length];
            new WeightMatrix(tensor.Type, file.DataPointer(tensor), 1, length).DequantizeRow(0, values);
            return values;
        }
    }
}
