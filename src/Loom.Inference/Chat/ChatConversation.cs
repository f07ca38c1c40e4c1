using Loom.Inference.Generation;

namespace Loom.Inference.Chat;

/// <summary>
/// A multi-turn chat over one generator: each reply re-renders the whole conversation with the chat template and
/// evaluates only what differs from the KV cache. When the history outgrows the context, the oldest exchanges
/// (never the system message) are dropped.
/// </summary>
public sealed class ChatConversation
{
    private readonly Generator _generator;
    private readonly List<ChatMessage> _messages = [];

    public ChatConversation(Generator generator, string? systemPrompt = null)
    {
        _generator = generator ?? throw new ArgumentNullException(nameof(generator));
        if (generator.Template is null)
            throw new InvalidOperationException("the model has no chat template (tokenizer.chat_template) that Loom recognises; use 'generate' for plain completion");
        if (!string.IsNullOrEmpty(systemPrompt)) _messages.Add(ChatMessage.System(systemPrompt));
    }

    public IReadOnlyList<ChatMessage> Messages => _messages;

    public GenerationResult Reply(string userText, GenerationOptions options, Action<string>? onText = null)
    {
        ArgumentNullException.ThrowIfNull(userText);
        _messages.Add(ChatMessage.User(userText));
        int[] tokens = Render();
        int firstTurn = _messages.Count > 0 && _messages[0].Role == "system" ? 1 : 0;
        while (tokens.Length + Math.Max(1, options.MaxNewTokens) > _generator.Evaluator.ContextSize && _messages.Count - firstTurn > 1)
        {
            // Drop the oldest user message and the assistant answer that followed it.
            _messages.RemoveAt(firstTurn);
            if (_messages.Count - firstTurn > 1 && _messages[firstTurn].Role == "assistant") _messages.RemoveAt(firstTurn);
            tokens = Render();
        }
        try
        {
            var result = _generator.Generate(userText, tokens, options with { ReuseCachedPrefix = true }, onText);
            _messages.Add(ChatMessage.Assistant(result.Output));
            return result;
        }
        catch
        {
            _messages.RemoveAt(_messages.Count - 1);
            throw;
        }
    }

    private int[] Render() => _generator.TokenizeText(_generator.FormatChat(_messages));
}
