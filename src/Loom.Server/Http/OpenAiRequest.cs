using System.Text.Json;
using Loom.Inference.Chat;
using Loom.Inference.Generation;
using Loom.Inference.Sampling;
using Loom.Server.Engine;

namespace Loom.Server.Http;

/// <summary>The settings shared by completions and chat completions, read and checked from a request body.</summary>
internal sealed record OpenAiRequest(
    GenerationOptions Options,
    int Choices,
    bool Stream,
    bool IncludeUsage,
    int? TopLogprobs)
{
    public const int MaxChoices = 16;
    public const int MaxStopStrings = 16;

    /// <summary>Choice i samples with seed + i, so the choices differ yet each is reproducible.</summary>
    public IReadOnlyList<SequenceRequest> Sequences(int[] prompt, CancellationToken cancellation) =>
        Enumerable.Range(0, Choices)
            .Select(i => new SequenceRequest(prompt, Options with { Sampling = Options.Sampling with { Seed = unchecked(Options.Sampling.Seed + (uint)i) } }, TopLogprobs, cancellation))
            .ToArray();

    public static OpenAiRequest Parse(JsonBody body, LoomEngine engine, bool chat)
    {
        string? model = body.String("model");
        if (model is not null && model != engine.ModelId)
            throw new ApiException(404, $"The model '{model}' does not exist; this server serves '{engine.ModelId}'", "model", "model_not_found");

        long? maxTokens = chat ? body.Integer("max_completion_tokens", 1, engine.ContextSize) ?? body.Integer("max_tokens", 1, engine.ContextSize)
                               : body.Integer("max_tokens", 0, engine.ContextSize);

        var defaults = new SamplerOptions();
        long? seed = body.Integer("seed", long.MinValue, long.MaxValue);
        if (seed is < 0 or > uint.MaxValue) throw ApiException.BadRequest($"'seed' must be between 0 and {uint.MaxValue} (got {seed})", "seed", "invalid_value");
        var sampling = new SamplerOptions
        {
            Temperature = body.Number("temperature", 0, 2) ?? defaults.Temperature,
            TopP = body.Number("top_p", 0, 1) ?? defaults.TopP,
            TopK = (int)(body.Integer("top_k", 0, int.MaxValue) ?? defaults.TopK),
            MinP = body.Number("min_p", 0, 1) ?? defaults.MinP,
            RepeatPenalty = body.Number("repeat_penalty", 1e-6, 100) ?? defaults.RepeatPenalty,
            PenaltyLastN = (int)(body.Integer("repeat_last_n", 0, SamplerOptions.MaxPenaltyLastN) ?? defaults.PenaltyLastN),
            FrequencyPenalty = body.Number("frequency_penalty", -2, 2) ?? 0,
            PresencePenalty = body.Number("presence_penalty", -2, 2) ?? 0,
            Seed = seed is { } s ? (uint)s : (uint)Random.Shared.NextInt64(1L << 32),
        };

        int choices = (int)(body.Integer("n", 1, MaxChoices) ?? 1);
        bool stream = body.Bool("stream") ?? false;
        bool includeUsage = false;
        if (body.Get("stream_options") is { } streamOptions)
        {
            if (streamOptions.ValueKind != JsonValueKind.Object) throw JsonBody.WrongType("stream_options", "an object", streamOptions);
            if (streamOptions.TryGetProperty("include_usage", out var include) && include.ValueKind != JsonValueKind.Null)
            {
                if (include.ValueKind is not (JsonValueKind.True or JsonValueKind.False)) throw JsonBody.WrongType("stream_options.include_usage", "a boolean", include);
                includeUsage = include.GetBoolean();
            }
        }

        int? topLogprobs;
        if (chat)
        {
            bool logprobs = body.Bool("logprobs") ?? false;
            long? top = body.Integer("top_logprobs", 0, SequenceRequest.MaxTopLogprobs);
            if (top is not null && !logprobs) throw ApiException.BadRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs", "invalid_value");
            topLogprobs = logprobs ? (int)(top ?? 0) : null;
        }
        else
        {
            topLogprobs = (int?)body.Integer("logprobs", 0, SequenceRequest.MaxTopLogprobs);
        }

        var options = new GenerationOptions
        {
            // Without a limit a sequence runs until it ends or its context is full.
            MaxNewTokens = (int)(maxTokens ?? engine.ContextSize),
            Sampling = sampling,
            StopStrings = body.StopStrings("stop", MaxStopStrings),
        };
        return new OpenAiRequest(options, choices, stream, includeUsage, topLogprobs);
    }

    /// <summary>"messages": roles and text contents (a string, or an array of text parts).</summary>
    public static List<ChatMessage> Messages(JsonBody body)
    {
        if (body.Get("messages") is not { } messages) throw ApiException.BadRequest("'messages' is required", "messages", "missing_required_parameter");
        if (messages.ValueKind != JsonValueKind.Array) throw JsonBody.WrongType("messages", "an array", messages);
        if (messages.GetArrayLength() == 0) throw ApiException.BadRequest("'messages' must hold at least one message", "messages", "invalid_value");
        var result = new List<ChatMessage>();
        int index = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string where = $"messages[{index++}]";
            if (m.ValueKind != JsonValueKind.Object) throw JsonBody.WrongType(where, "an object", m);
            if (!m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String)
                throw ApiException.BadRequest($"'{where}.role' must be a string", $"{where}.role", "invalid_type");
            string roleName = JsonBody.Text(role, $"{where}.role") switch
            {
                "developer" => "system",
                var known when known is "system" or "user" or "assistant" or "tool" => known,
                var other => throw ApiException.BadRequest($"'{where}.role' must be system, developer, user, assistant or tool (got '{other}')", $"{where}.role", "invalid_value"),
            };
            result.Add(new ChatMessage(roleName, Content(m, where)));
        }
        return result;
    }

    private static string Content(JsonElement message, string where)
    {
        if (!message.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null) return "";
        if (content.ValueKind == JsonValueKind.String) return JsonBody.Text(content, $"{where}.content");
        if (content.ValueKind != JsonValueKind.Array) throw JsonBody.WrongType($"{where}.content", "a string or an array of content parts", content);
        var text = new System.Text.StringBuilder();
        foreach (var part in content.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
                throw ApiException.BadRequest($"'{where}.content' parts must be objects with a 'type'", $"{where}.content", "invalid_type");
            string partType = JsonBody.Text(type, $"{where}.content");
            if (partType != "text")
                throw ApiException.BadRequest($"'{where}.content' part type '{partType}' is not supported; only text", $"{where}.content", "invalid_value");
            if (!part.TryGetProperty("text", out var partText) || partText.ValueKind != JsonValueKind.String)
                throw ApiException.BadRequest($"'{where}.content' text parts need a string 'text'", $"{where}.content", "invalid_type");
            text.Append(JsonBody.Text(partText, $"{where}.content"));
        }
        return text.ToString();
    }

    /// <summary>"prompt": a string, an array holding one string, or an array of token ids.</summary>
    public static int[] CompletionPrompt(JsonBody body, LoomEngine engine)
    {
        if (body.Get("prompt") is not { } prompt) throw ApiException.BadRequest("'prompt' is required", "prompt", "missing_required_parameter");
        if (prompt.ValueKind == JsonValueKind.String) return engine.TokenizeText(JsonBody.Text(prompt, "prompt"));
        if (prompt.ValueKind != JsonValueKind.Array) throw JsonBody.WrongType("prompt", "a string or an array", prompt);
        int length = prompt.GetArrayLength();
        if (length == 1 && prompt[0].ValueKind == JsonValueKind.String) return engine.TokenizeText(JsonBody.Text(prompt[0], "prompt"));
        if (length > 0 && prompt[0].ValueKind == JsonValueKind.String)
            throw ApiException.BadRequest("only one prompt per request is supported; send one request per prompt", "prompt", "invalid_value");
        if (length == 0) throw ApiException.BadRequest("'prompt' must not be an empty array", "prompt", "invalid_value");
        if (length > engine.ContextSize) throw PromptTooLong(length, engine.ContextSize, "prompt");
        var tokens = new int[length];
        int vocab = engine.Codec.Tokenizer.VocabSize;
        for (int i = 0; i < length; i++)
        {
            var t = prompt[i];
            if (t.ValueKind != JsonValueKind.Number || !t.TryGetInt32(out tokens[i]) || (uint)tokens[i] >= (uint)vocab)
                throw ApiException.BadRequest($"'prompt[{i}]' must be a token id between 0 and {vocab - 1}", "prompt", "invalid_value");
        }
        return tokens;
    }

    public static ApiException PromptTooLong(int tokens, int context, string param) =>
        ApiException.BadRequest($"This model's context holds {context} tokens, but the prompt is {tokens} tokens; it must be shorter than the context to leave room for output.", param, "context_length_exceeded");
}
