using Loom.Inference.Sampling;
using Loom.Models.Tokenizers;

namespace Loom.Inference.Generation;

/// <summary>
/// One sequence's output side: samples each next token, decides when generation ends (end-of-generation token unless
/// <see cref="GenerationOptions.IgnoreEndOfGeneration"/>, stop string, token limit) and turns tokens into UTF-8-safe
/// text that never shows a stop string. The caller owns evaluation, so the same stream serves a single session
/// (<see cref="Generator"/>) and a batched scheduler.
/// </summary>
public sealed class GenerationStream
{
    private readonly ITokenCodec _tokenizer;
    private readonly Sampler _sampler;
    private readonly int _maxNewTokens;
    private readonly Utf8StreamDecoder _decoder = new();
    private readonly StopStringFilter _stops;
    private readonly List<int> _tokens;

    private readonly bool _ignoreEndOfGeneration;
    // With IgnoreEndOfGeneration: the logits with every end-of-generation token at −∞, and those tokens (found on first use).
    private float[]? _maskedLogits;
    private int[]? _endOfGenerationIds;

    /// <param name="sampler">A sampler that has already accepted the prompt tokens.</param>
    /// <param name="options">The token limit, stop strings and <see cref="GenerationOptions.IgnoreEndOfGeneration"/>
    /// (sampling settings belong to <paramref name="sampler"/>).</param>
    public GenerationStream(ITokenCodec tokenizer, Sampler sampler, GenerationOptions options)
    {
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _sampler = sampler ?? throw new ArgumentNullException(nameof(sampler));
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxNewTokens);
        _maxNewTokens = options.MaxNewTokens;
        _stops = new StopStringFilter(options.StopStrings);
        _ignoreEndOfGeneration = options.IgnoreEndOfGeneration;
        _tokens = new List<int>(Math.Min(_maxNewTokens, 4096));
        if (_maxNewTokens == 0) FinishReason = Generation.FinishReason.Length;
    }

    /// <summary>Generated tokens, without the end-of-generation token.</summary>
    public IReadOnlyList<int> Tokens => _tokens;
    /// <summary>Why generation ended, or null while it goes on.</summary>
    public FinishReason? FinishReason { get; private set; }
    public bool IsFinished => FinishReason is not null;
    /// <summary>The token the last <see cref="Next"/> sampled (the one to evaluate next).</summary>
    public int LastToken { get; private set; } = -1;
    public string? MatchedStop => _stops.MatchedStop;

    /// <summary>
    /// Samples and accepts the next token from <paramref name="logits"/> and returns the text it makes safe to show.
    /// When the token ends generation, <see cref="FinishReason"/> is set and the text includes whatever was held back.
    /// </summary>
    public string Next(ReadOnlySpan<float> logits)
    {
        if (IsFinished) throw new InvalidOperationException("generation has already finished");
        int token = _sampler.Sample(_ignoreEndOfGeneration ? WithoutEndOfGeneration(logits) : logits);
        _sampler.Accept(token);
        LastToken = token;
        if (_tokenizer.IsEndOfGeneration(token)) return End(Generation.FinishReason.EndOfGeneration);
        _tokens.Add(token);
        string text = _stops.Push(_decoder.Push(_tokenizer.TokenBytes(token)));
        if (_stops.Stopped)
        {
            FinishReason = Generation.FinishReason.Stop;
            return text;
        }
        return _tokens.Count >= _maxNewTokens ? text + End(Generation.FinishReason.Length) : text;
    }

    private ReadOnlySpan<float> WithoutEndOfGeneration(ReadOnlySpan<float> logits)
    {
        if (_maskedLogits is null || _maskedLogits.Length != logits.Length)
        {
            _maskedLogits = new float[logits.Length];
            _endOfGenerationIds = Enumerable.Range(0, logits.Length).Where(_tokenizer.IsEndOfGeneration).ToArray();
        }
        logits.CopyTo(_maskedLogits);
        foreach (int id in _endOfGenerationIds!) _maskedLogits[id] = float.NegativeInfinity;
        return _maskedLogits;
    }

    /// <summary>
    /// Ends generation (for a reason such as a full context) and returns the held-back text; a stop string
    /// completed by that text still wins. Does nothing once finished.
    /// </summary>
    public string End(FinishReason reason)
    {
        if (IsFinished) return "";
        string text = _stops.Push(_decoder.Flush());
        text += _stops.Flush();
        FinishReason = _stops.Stopped ? Generation.FinishReason.Stop : reason;
        return text;
    }
}
