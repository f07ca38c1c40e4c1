using Loom.Core.IO;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;

namespace Loom.Models.Architectures;

/// <summary>A decoder-only transformer whose weights stay in the memory-mapped GGUF file.</summary>
public sealed class TransformerModel : IDisposable
{
    private readonly GgufFile _file;
    private readonly WeightArena? _arena;
    // The tokenizer is built on first use: a model can be evaluated from token ids without one.
    private readonly Lazy<Tokenizer> _tokenizer;
    private bool _disposed;

    private TransformerModel(GgufFile file, WeightArena? arena, ModelConfig config, ModelWeights weights)
    {
        _file = file;
        _arena = arena;
        Config = config;
        Weights = weights;
        _tokenizer = new Lazy<Tokenizer>(() => Tokenizer.FromGguf(file));
    }

    public ModelConfig Config { get; }
    public Tokenizer Tokenizer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _tokenizer.Value;
        }
    }
    public GgufFile File => _file;
    /// <summary>True once disposed: the weights' memory map is gone and nothing may evaluate the model any more.</summary>
    public bool IsDisposed => _disposed;
    /// <summary>The bound tensors (views into the memory map, valid until the model is disposed).</summary>
    public ModelWeights Weights { get; }

    /// <summary>
    /// Bytes of weights one decoded token streams from memory: every tensor once, the output projection included (the
    /// embedding table when the two are tied), except an untied embedding table, of which a token reads just one row.
    /// Decode is bound by this: tokens/s × these bytes against the machine's read bandwidth is its roofline.
    /// </summary>
    public long WeightBytesPerToken
    {
        get
        {
            bool tied = ModelWeights.TiedOutput(_file);
            return _file.Tensors.Where(t => tied || t.Name != "token_embd.weight").Sum(t => t.ByteSize);
        }
    }

    /// <summary>Bytes of weight matrices held in 2 MiB pages (see <see cref="ModelLoadOptions.HugePages"/>); 0 when they stay in the map.</summary>
    public long HugePageWeightBytes => _arena?.Used ?? 0;

    /// <summary>
    /// Opens a GGUF file and binds its weights; the model owns (and disposes) the file. The file is mapped copy-on-write
    /// (the file on disk is never changed). The matrices every token multiplies are copied into 2 MiB pages where the
    /// options and the system allow it (see <see cref="ModelLoadOptions.HugePages"/>), and otherwise stay in the map;
    /// Q8_0, Q4_0, Q5_0, Q4_K and Q6_K matrices are then reorganised, wherever they live, into the kernels' interleaved
    /// layout, so <see cref="File"/>'s data for those tensors is no longer to be read as GGML rows.
    /// </summary>
    public static TransformerModel Load(string path, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        var file = GgufFile.OpenPrivateCopy(path);
        WeightArena? arena = null;
        try
        {
            var config = ModelConfig.FromGguf(file);
            long matrixBytes = ModelWeights.ArenaBytes(file);
            if (options.HugePages && matrixBytes > 0 && WeightArena.Worthwhile(matrixBytes))
                arena = new WeightArena(matrixBytes);
            return new TransformerModel(file, arena, config, ModelWeights.Bind(file, config, arena));
        }
        catch
        {
            arena?.Dispose();
            file.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _arena?.Dispose();
        _file.Dispose();
    }
}

/// <summary>How <see cref="TransformerModel.Load"/> places the weights.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>
    /// Copy the matrices every token multiplies out of the memory map into memory backed by 2 MiB pages (Linux with
    /// transparent huge pages; elsewhere this does nothing), releasing the mapped pages, so resident memory stays the
    /// same. Decode streams these matrices once per token, and over 2 MiB pages it ran up to 1.42× faster on this
    /// project's benchmark machine (1.00–1.06× on the largest model measured, Llama-3.2-1B). Loading takes one copy
    /// longer. Models larger than half the memory available at load stay in the map (see
    /// <see cref="Loom.Core.IO.WeightArena.Worthwhile"/>).
    /// </summary>
    public bool HugePages { get; init; } = true;
}

public enum RopeScalingType
{
    None,
    /// <summary>Position interpolation: angles are multiplied by 1/factor.</summary>
    Linear,
    /// <summary>YaRN: interpolation blended with extrapolation per dimension, plus an attention magnitude correction.</summary>
    Yarn,
}

/// <summary>Hyper-parameters read from GGUF metadata.</summary>
public sealed record ModelConfig
{
    public required string Architecture { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>Trained context length ({arch}.context_length).</summary>
    public required int ContextLength { get; init; }
    public required int EmbeddingLength { get; init; }
    public required int LayerCount { get; init; }
    public required int HeadCount { get; init; }
    public required int HeadCountKv { get; init; }
    /// <summary>The Jinja chat template (tokenizer.chat_template), or null.</summary>
    public string? ChatTemplate { get; init; }

    private ArchitectureSpec? _spec;
    /// <summary>How this architecture computes (norm type, RoPE mode, FFN type...).</summary>
    public ArchitectureSpec Spec { get => _spec ?? ArchitectureSpec.For(Architecture); init => _spec = value; }
    public int FeedForwardLength { get; init; }
    /// <summary>Per-head dimension of queries and keys ({arch}.attention.key_length, default embedding/heads).</summary>
    public int KeyLength { get; init; }
    /// <summary>Per-head dimension of values ({arch}.attention.value_length, default KeyLength).</summary>
    public int ValueLength { get; init; }
    public float NormEpsilon { get; init; } = 1e-5f;
    public float RopeFreqBase { get; init; } = 10000f;
    /// <summary>How many leading dimensions of each head are rotated ({arch}.rope.dimension_count, default KeyLength).</summary>
    public int RopeDimensionCount { get; init; }
    public RopeScalingType RopeScaling { get; init; }
    /// <summary>Context extension factor; RoPE angles are scaled by 1/factor.</summary>
    public float RopeScalingFactor { get; init; } = 1f;
    /// <summary>The context length the model was pre-trained with before extension (used by YaRN).</summary>
    public int RopeOriginalContextLength { get; init; }
    public float YarnExtFactor { get; init; }
    public float YarnAttnFactor { get; init; } = 1f;
    public float YarnBetaFast { get; init; } = 32f;
    public float YarnBetaSlow { get; init; } = 1f;

    public int QueryDim => HeadCount * KeyLength;
    public int KeyValueDim => HeadCountKv * KeyLength;
    public int ValueDim => HeadCountKv * ValueLength;

    /// <summary>Reads the hyper-parameters of the architecture named by general.architecture.</summary>
    public static ModelConfig FromGguf(GgufFile file)
    {
        string arch = file.GetString("general.architecture")
            ?? throw new ModelFormatException($"{file.Path}: metadata 'general.architecture' is missing");
        var spec = ArchitectureSpec.For(arch);

        int RequiredInt(string key, int min = 1, int max = 1 << 24) => Checked(key,
            file.GetInteger($"{arch}.{key}") ?? throw new ModelFormatException($"{file.Path}: metadata '{arch}.{key}' is missing"), min, max);
        int OptionalInt(string key, int fallback, int min = 1, int max = 1 << 24) =>
            file.GetInteger($"{arch}.{key}") is long v ? Checked(key, v, min, max) : fallback;
        int Checked(string key, long value, int min, int max) => value >= min && value <= max
            ? (int)value
            : throw new ModelFormatException($"{file.Path}: metadata '{arch}.{key}' = {value} is out of range ({min}..{max})");
        float Float(string key, float fallback) => file.GetFloat($"{arch}.{key}") ?? fallback;

        var token = file.FindTensor("token_embd.weight")
            ?? throw new ModelFormatException($"{file.Path}: tensor 'token_embd.weight' is missing");
        if (token.Dimensions.Length != 2 || token.Dimensions[1] > int.MaxValue)
            throw new ModelFormatException($"{file.Path}: tensor 'token_embd.weight' has shape [{string.Join(", ", token.Dimensions)}], expected [embedding, vocab]");

        int embedding = RequiredInt("embedding_length");
        int heads = RequiredInt("attention.head_count", max: 1 << 12);
        int headsKv = OptionalInt("attention.head_count_kv", heads, max: heads);
        if (heads % headsKv != 0)
            throw new ModelFormatException($"{file.Path}: {heads} query heads cannot share {headsKv} key/value heads evenly");
        if (embedding % heads != 0 && !file.Has($"{arch}.attention.key_length"))
            throw new ModelFormatException($"{file.Path}: embedding length {embedding} is not a multiple of {heads} heads and '{arch}.attention.key_length' is missing");
        int keyLength = OptionalInt("attention.key_length", embedding / heads, max: 1 << 16);
        int valueLength = OptionalInt("attention.value_length", keyLength, max: 1 << 16);
        int ropeDims = spec.Rope == RopeKind.None ? 0 : OptionalInt("rope.dimension_count", keyLength, max: keyLength);
        if (ropeDims % 2 != 0)
            throw new ModelFormatException($"{file.Path}: '{arch}.rope.dimension_count' = {ropeDims} must be even");
        int contextLength = RequiredInt("context_length", max: int.MaxValue);

        string normKey = spec.Norm == NormKind.RmsNorm ? "attention.layer_norm_rms_epsilon" : "attention.layer_norm_epsilon";
        float epsilon = file.GetFloat($"{arch}.{normKey}")
            ?? throw new ModelFormatException($"{file.Path}: metadata '{arch}.{normKey}' is missing");

        // Scaling: {arch}.rope.scaling.type (current) or the older {arch}.rope.scale_linear.
        var scaling = RopeScalingType.None;
        float factor = Float("rope.scaling.factor", 0f);
        string? scalingName = file.GetString($"{arch}.rope.scaling.type");
        switch (scalingName)
        {
            case null or "none":
                if (file.GetFloat($"{arch}.rope.scale_linear") is float linear && linear != 1f)
                {
                    scaling = RopeScalingType.Linear;
                    factor = linear;
                }
                break;
            case "linear": scaling = RopeScalingType.Linear; break;
            case "yarn": scaling = RopeScalingType.Yarn; break;
            default: throw new NotSupportedException($"{file.Path}: RoPE scaling type '{scalingName}' is not supported (none, linear, yarn)");
        }
        if (scaling == RopeScalingType.None || factor == 0f) factor = 1f;
        if (!(factor > 0f) || float.IsInfinity(factor))
            throw new ModelFormatException($"{file.Path}: RoPE scaling factor {factor} is not a positive number");

        float freqBase = Float("rope.freq_base", 10000f);
        if (!(freqBase > 1f) || float.IsInfinity(freqBase))
            throw new ModelFormatException($"{file.Path}: '{arch}.rope.freq_base' = {freqBase} must be greater than 1");

        return new ModelConfig
        {
            Architecture = arch,
            Spec = spec,
            VocabSize = (int)token.Dimensions[1],
            ContextLength = contextLength,
            EmbeddingLength = embedding,
            LayerCount = RequiredInt("block_count", max: 1 << 12),
            HeadCount = heads,
            HeadCountKv = headsKv,
            ChatTemplate = file.GetString("tokenizer.chat_template"),
            FeedForwardLength = RequiredInt("feed_forward_length"),
            KeyLength = keyLength,
            ValueLength = valueLength,
            NormEpsilon = epsilon,
            RopeFreqBase = freqBase,
            RopeDimensionCount = ropeDims,
            RopeScaling = scaling,
            RopeScalingFactor = factor,
            RopeOriginalContextLength = OptionalInt("rope.scaling.original_context_length", contextLength, max: int.MaxValue),
            // llama.cpp enables the extrapolation blend fully for YaRN unless the file says otherwise.
            YarnExtFactor = scaling == RopeScalingType.Yarn ? Float("rope.scaling.yarn_ext_factor", 1f) : 0f,
            YarnAttnFactor = Float("rope.scaling.yarn_attn_factor", Float("rope.scaling.attn_factor", 1f)),
            YarnBetaFast = Float("rope.scaling.yarn_beta_fast", 32f),
            YarnBetaSlow = Float("rope.scaling.yarn_beta_slow", 1f),
        };
    }
}
