using Loom.Inference.Sampling;

namespace Loom.Inference.Generation;

public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 128;
    public SamplerOptions Sampling { get; init; } = new();
    /// <summary>Texts that end generation; they are not part of the output.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Keep the cached positions the new prompt shares with what is already cached (chat turns).</summary>
    public bool ReuseCachedPrefix { get; init; }
    /// <summary>
    /// End-of-generation tokens do not end generation (llama.cpp's --ignore-eos): as in llama.cpp, which gives them a
    /// logit bias of −∞, they are never sampled, so the output holds no text of theirs and the sequence runs on to the
    /// token limit, a stop string or a full context.
    /// </summary>
    public bool IgnoreEndOfGeneration { get; init; }
}

public enum FinishReason
{
    /// <summary>A stop string appeared.</summary>
    Stop,
    /// <summary>The token limit or the context size was reached.</summary>
    Length,
    /// <summary>The model produced an end-of-generation token.</summary>
    EndOfGeneration,
}

/// <summary>What one prompt produced, with timings: prefill is the prompt's evaluation, decode everything after it.</summary>
public sealed record GenerationResult(
    string Prompt,
    string Output,
    int PromptTokens,
    IReadOnlyList<int> Tokens,
    FinishReason FinishReason,
    double PrefillMs,
    double DecodeMs)
{
    public int GeneratedTokens => Tokens.Count;
    /// <summary>Prompt positions actually evaluated (fewer than PromptTokens when a cached prefix was reused).</summary>
    public int PrefillTokens { get; init; } = PromptTokens;
    public double PrefillTokensPerSecond => PrefillMs > 0 ? PrefillTokens * 1000.0 / PrefillMs : 0;
    public double DecodeTokensPerSecond => DecodeMs > 0 ? GeneratedTokens * 1000.0 / DecodeMs : 0;
}

/// <summary>The prompt does not fit the context window; raised for that prompt only.</summary>
public sealed class PromptTooLongException(int promptTokens, int contextSize)
    : Exception($"the prompt is {promptTokens} tokens long but the context holds {contextSize}; it must be shorter than the context to leave room for output")
{
    public int PromptTokens { get; } = promptTokens;
    public int ContextSize { get; } = contextSize;
}
