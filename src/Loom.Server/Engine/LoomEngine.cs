using Loom.Inference;
using Loom.Inference.Chat;
using Loom.Inference.Generation;
using Loom.Models.Architectures;

namespace Loom.Server.Engine;

public sealed record EngineOptions
{
    /// <summary>Sequences decoded together (KV-cache slots).</summary>
    public int Parallel { get; init; } = 4;
    /// <summary>Positions per slot; 0 = the model's trained context, capped at 4096.</summary>
    public int ContextSize { get; init; }
    /// <summary>Sequences that may wait for a slot; past that, requests are refused.</summary>
    public int QueueCapacity { get; init; } = 64;
    /// <summary>Prompt tokens a sequence evaluates per step while prefilling.</summary>
    public int PrefillChunk { get; init; } = 64;
    /// <summary>Prompt tokens evaluated per step across all sequences (raised to one chunk if smaller).</summary>
    public int PrefillTokensPerStep { get; init; } = 256;
    /// <summary>The name clients use for the model; default: the file name without extension.</summary>
    public string? ModelId { get; init; }
    /// <summary>How every slot's KV cache stores keys and values.</summary>
    public KvCacheType CacheType { get; init; } = KvCacheType.F16;

    public void Validate()
    {
        if (Parallel is < 1 or > 256) throw new ArgumentException($"parallel sequences must be between 1 and 256 (got {Parallel})");
        if (ContextSize < 0) throw new ArgumentException($"the context size must not be negative (got {ContextSize})");
        if (QueueCapacity is < 0 or > 100_000) throw new ArgumentException($"the queue capacity must be between 0 and 100000 (got {QueueCapacity})");
        if (PrefillChunk is < 1 or > InferenceSession.MaxBatchSize * 8) throw new ArgumentException($"the prefill chunk must be between 1 and {InferenceSession.MaxBatchSize * 8} (got {PrefillChunk})");
        if (PrefillTokensPerStep is < 1 or > 1 << 16) throw new ArgumentException($"the prefill tokens per step must be between 1 and 65536 (got {PrefillTokensPerStep})");
        if (!Enum.IsDefined(CacheType)) throw new ArgumentException($"unknown KV cache type {CacheType}");
    }
}

/// <summary>
/// A loaded model served to many callers at once: tokenizes prompts and conversations, and runs sequences on a
/// <see cref="BatchScheduler"/>. Both the HTTP API and <see cref="LoomChatClient"/> sit on top of it.
/// </summary>
public sealed class LoomEngine : IDisposable
{
    private readonly TransformerModel _model;
    private readonly bool _ownsModel;
    private readonly BatchedInference _batch;
    private readonly BatchScheduler _scheduler;
    private readonly Lock _tokenizerLock = new();

    public LoomEngine(TransformerModel model, EngineOptions options, bool ownsModel = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _model = model;
        _ownsModel = ownsModel;
        Codec = new TokenizerCodec(model.Tokenizer);
        Prompts = new PromptEncoder(Codec, ChatTemplate.Detect(model.Config.ChatTemplate));
        ModelId = string.IsNullOrWhiteSpace(options.ModelId) ? "loom" : options.ModelId;
        Metrics = new ServerMetrics();
        _batch = new BatchedInference(model, options.Parallel, options.ContextSize, options.CacheType);
        try
        {
            _scheduler = new BatchScheduler(_batch, Codec, Metrics, options.QueueCapacity, options.PrefillChunk,
                Math.Max(options.PrefillChunk, options.PrefillTokensPerStep));
        }
        catch
        {
            _batch.Dispose();
            throw;
        }
        Created = DateTimeOffset.UtcNow;
    }

    /// <summary>Loads a GGUF model (placed as <paramref name="load"/> says); its id is the file name without extension unless options name one.</summary>
    public static LoomEngine Load(string path, EngineOptions options, ModelLoadOptions? load = null)
    {
        var model = TransformerModel.Load(path, load);
        try
        {
            return new LoomEngine(model, options with { ModelId = options.ModelId ?? Path.GetFileNameWithoutExtension(path) }, ownsModel: true);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public string ModelId { get; }
    public DateTimeOffset Created { get; }
    public ServerMetrics Metrics { get; }
    public TokenizerCodec Codec { get; }
    public PromptEncoder Prompts { get; }
    public int ContextSize => _scheduler.ContextSize;
    public int Parallel => _scheduler.MaxSequences;

    public int[] TokenizeText(string text)
    {
        lock (_tokenizerLock) return Prompts.TokenizeText(text);
    }

    /// <summary>
    /// A conversation's prompt tokens: through the model's chat template, or — for a model without one — the
    /// messages' texts on separate lines as a plain completion prompt.
    /// </summary>
    public int[] TokenizeChat(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        string text = Prompts.Template is not null ? Prompts.FormatChat(messages) : string.Join("\n", messages.Select(m => m.Content));
        return TokenizeText(text);
    }

    /// <summary>A token's bytes as text (invalid UTF-8 becomes U+FFFD), for log-probability listings.</summary>
    public string TokenText(int token) => System.Text.Encoding.UTF8.GetString(Codec.TokenBytes(token));

    public byte[] TokenBytes(int token) => Codec.TokenBytes(token);

    /// <summary>Queues sequences together; false when the queue is full.</summary>
    public bool TrySubmit(IReadOnlyList<SequenceRequest> requests) => _scheduler.TrySubmit(requests);

    public void Dispose()
    {
        _scheduler.Dispose();
        _batch.Dispose();
        if (_ownsModel) _model.Dispose();
    }
}
