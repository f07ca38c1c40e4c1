using System.Diagnostics;
using System.Threading.Channels;
using Loom.Inference.Generation;

namespace Loom.Server.Engine;

/// <summary>The log-probability of one generated token and, when asked for, of the most likely alternatives.</summary>
public readonly record struct TokenLogprob(int Token, float Logprob, IReadOnlyList<(int Token, float Logprob)> Top);

/// <summary>
/// What a sequence produces, in order: one item per sampled token (its safe-to-show text, possibly empty), then one
/// final item with <see cref="Finish"/> (or <see cref="Error"/>) set, carrying any text that was held back.
/// </summary>
public readonly record struct SequenceOutput(string Text, TokenLogprob? Logprob, FinishReason? Finish = null, int CompletionTokens = 0, Exception? Error = null)
{
    public bool IsFinal => Finish is not null || Error is not null;
}

/// <summary>One sequence to generate: prompt tokens, options, and where its output goes.</summary>
public sealed class SequenceRequest
{
    private readonly Channel<SequenceOutput> _output = Channel.CreateUnbounded<SequenceOutput>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });

    /// <param name="topLogprobs">Null: no log-probabilities; otherwise how many alternatives to report per token (0–20).</param>
    public SequenceRequest(int[] promptTokens, GenerationOptions options, int? topLogprobs, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        ArgumentNullException.ThrowIfNull(options);
        if (promptTokens.Length == 0) throw new ArgumentException("the prompt has no tokens", nameof(promptTokens));
        if (topLogprobs is < 0 or > MaxTopLogprobs) throw new ArgumentOutOfRangeException(nameof(topLogprobs), topLogprobs, $"top logprobs must be between 0 and {MaxTopLogprobs}");
        PromptTokens = promptTokens;
        Options = options;
        TopLogprobs = topLogprobs;
        Cancellation = cancellation;
    }

    public const int MaxTopLogprobs = 20;

    public int[] PromptTokens { get; }
    public GenerationOptions Options { get; }
    public int? TopLogprobs { get; }
    public CancellationToken Cancellation { get; }
    /// <summary>Started when the request was queued: time to first token counts from here.</summary>
    public long QueuedAt { get; internal set; } = Stopwatch.GetTimestamp();
    /// <summary>When the first token was sampled (<see cref="Stopwatch"/> timestamp), or 0 (none yet, or it ended generation).</summary>
    public long FirstTokenAt { get; internal set; }
    /// <summary>When the final output was written (<see cref="Stopwatch"/> timestamp), or 0.</summary>
    public long FinishedAt { get; internal set; }

    public ChannelReader<SequenceOutput> Output => _output.Reader;
    internal ChannelWriter<SequenceOutput> Writer => _output.Writer;

    private CancellationTokenRegistration _cancelRegistration;

    internal void WakeOnCancel(Action wake) => _cancelRegistration = Cancellation.Register(wake);

    /// <summary>Ends the output (with an error when the sequence did not finish) and stops watching for cancellation.</summary>
    internal void Complete(Exception? error)
    {
        _output.Writer.TryComplete(error);
        // Unregister, not Dispose: Dispose would wait for a running callback, which may be waiting for the scheduler.
        _cancelRegistration.Unregister();
    }

    /// <summary>Reads the whole output: the text, finish reason, token count and per-token log-probabilities.</summary>
    public async Task<SequenceResult> ReadAllAsync(CancellationToken cancellation = default)
    {
        var text = new System.Text.StringBuilder();
        var logprobs = new List<TokenLogprob>();
        await foreach (var item in Output.ReadAllAsync(cancellation))
        {
            cancellation.ThrowIfCancellationRequested();
            if (item.Error is not null) throw new SequenceFailedException(item.Error);
            text.Append(item.Text);
            if (item.Logprob is { } lp) logprobs.Add(lp);
            if (item.Finish is { } reason) return new SequenceResult(text.ToString(), reason, PromptTokens.Length, item.CompletionTokens, logprobs);
        }
        throw new OperationCanceledException("the sequence ended without a result");
    }
}

public sealed record SequenceResult(string Text, FinishReason Finish, int PromptTokens, int CompletionTokens, IReadOnlyList<TokenLogprob> Logprobs);

/// <summary>Evaluation failed inside the engine for this sequence.</summary>
public sealed class SequenceFailedException(Exception inner) : Exception($"generation failed: {inner.Message}", inner);
