using System.Runtime.CompilerServices;
using Loom.Inference.Generation;
using Loom.Inference.Sampling;
using Loom.Server.Engine;
using Microsoft.Extensions.AI;
using LoomChatMessage = Loom.Inference.Chat.ChatMessage;

namespace Loom.Server;

/// <summary>
/// <see cref="IChatClient"/> over a <see cref="LoomEngine"/>: in-process chat on the same continuous-batching engine
/// that serves HTTP, for Microsoft.Extensions.AI, Semantic Kernel and Agent Framework users. The engine stays the
/// caller's: disposing the client leaves it running.
/// </summary>
public sealed class LoomChatClient(LoomEngine engine) : IChatClient
{
    private readonly LoomEngine _engine = engine ?? throw new ArgumentNullException(nameof(engine));

    public ChatClientMetadata Metadata => new("loom", null, _engine.ModelId);

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var request = Submit(messages, options, cancellationToken);
        var result = await request.ReadAllAsync(cancellationToken);
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, result.Text))
        {
            ResponseId = NewId(),
            ModelId = _engine.ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = Finish(result.Finish),
            Usage = Usage(result.PromptTokens, result.CompletionTokens),
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = Submit(messages, options, cancellationToken);
        string id = NewId();
        await foreach (var output in request.Output.ReadAllAsync(cancellationToken))
        {
            // Output already buffered must not keep flowing after cancellation.
            cancellationToken.ThrowIfCancellationRequested();
            if (output.Error is not null) throw new SequenceFailedException(output.Error);
            var update = new ChatResponseUpdate(ChatRole.Assistant, output.Text)
            {
                ResponseId = id,
                MessageId = id,
                ModelId = _engine.ModelId,
                CreatedAt = DateTimeOffset.UtcNow,
            };
            if (output.Finish is { } finish)
            {
                update.FinishReason = Finish(finish);
                update.Contents.Add(new UsageContent(Usage(request.PromptTokens.Length, output.CompletionTokens)));
            }
            else if (output.Text.Length == 0)
            {
                continue;
            }
            yield return update;
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return Metadata;
        if (serviceType == typeof(LoomEngine)) return _engine;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    public void Dispose()
    {
    }

    private SequenceRequest Submit(IEnumerable<ChatMessage> messages, ChatOptions? options, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (options?.ModelId is { } model && model != _engine.ModelId)
            throw new ArgumentException($"the model '{model}' is not loaded; this engine runs '{_engine.ModelId}'", nameof(options));

        var conversation = new List<LoomChatMessage>();
        if (!string.IsNullOrEmpty(options?.Instructions)) conversation.Add(LoomChatMessage.System(options.Instructions));
        foreach (var m in messages) conversation.Add(new LoomChatMessage(m.Role.Value, m.Text));
        if (conversation.Count == 0) throw new ArgumentException("there are no messages to respond to", nameof(messages));
        int[] prompt = _engine.TokenizeChat(conversation);

        var defaults = new SamplerOptions();
        long? seed = options?.Seed;
        if (seed is < 0 or > uint.MaxValue) throw new ArgumentOutOfRangeException(nameof(options), seed, $"the seed must be between 0 and {uint.MaxValue}");
        var sampling = new SamplerOptions
        {
            Temperature = options?.Temperature ?? defaults.Temperature,
            TopP = options?.TopP ?? defaults.TopP,
            TopK = options?.TopK ?? defaults.TopK,
            FrequencyPenalty = options?.FrequencyPenalty ?? 0,
            PresencePenalty = options?.PresencePenalty ?? 0,
            Seed = seed is { } s ? (uint)s : (uint)Random.Shared.NextInt64(1L << 32),
        };
        sampling.Validate();
        int maxTokens = options?.MaxOutputTokens ?? _engine.ContextSize;
        if (maxTokens < 1) throw new ArgumentOutOfRangeException(nameof(options), maxTokens, "the output token limit must be at least 1");

        var request = new SequenceRequest(prompt, new GenerationOptions
        {
            MaxNewTokens = maxTokens,
            Sampling = sampling,
            StopStrings = options?.StopSequences?.ToArray() ?? [],
        }, topLogprobs: null, cancellation);
        if (!_engine.TrySubmit([request]))
            throw new InvalidOperationException("the engine is at capacity: too many sequences are waiting; retry later");
        return request;
    }

    private static string NewId() => "chatcmpl-" + Guid.NewGuid().ToString("N");

    private static ChatFinishReason Finish(FinishReason reason) => reason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    private static UsageDetails Usage(int prompt, int completion) =>
        new() { InputTokenCount = prompt, OutputTokenCount = completion, TotalTokenCount = prompt + completion };
}
