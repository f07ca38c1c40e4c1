using Loom.Inference.Chat;

namespace Loom.Inference.Generation;

/// <summary>Turns prompts and conversations into prompt tokens the way llama.cpp does.</summary>
public sealed class PromptEncoder(ITokenCodec tokenizer, ChatTemplate? template)
{
    public ITokenCodec Tokenizer { get; } = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
    public ChatTemplate? Template { get; } = template;

    private string BosText => Tokenizer.BosId >= 0 ? Tokenizer.Piece(Tokenizer.BosId) : "";
    private string EosText => Tokenizer.EosId >= 0 ? Tokenizer.Piece(Tokenizer.EosId) : "";

    /// <summary>Renders a conversation with the chat template (with the assistant's generation prompt).</summary>
    public string FormatChat(IReadOnlyList<ChatMessage> messages)
    {
        if (Template is null) throw new InvalidOperationException("the model has no chat template (tokenizer.chat_template) that Loom recognises");
        return Template.Format(messages, addGenerationPrompt: true, BosText, EosText);
    }

    /// <summary>
    /// Tokenizes a prompt: a question goes through the chat template when there is one, anything else (and any prompt
    /// when there is no template) is used as it is; then as <see cref="TokenizeText"/>.
    /// </summary>
    public int[] TokenizePrompt(string prompt, PromptKind kind)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        bool chat = kind == PromptKind.Question && Template is not null;
        return TokenizeText(chat ? FormatChat([ChatMessage.User(prompt)]) : prompt);
    }

    /// <summary>
    /// Tokenizes text as a prompt: control-token text (such as "&lt;|im_start|&gt;") becomes its token, and BOS is added
    /// when the vocabulary asks for it and the text does not already start with it; an empty prompt becomes BOS alone.
    /// </summary>
    public int[] TokenizeText(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        int[] tokens = Tokenizer.Encode(text, addSpecial: false, parseSpecial: true);
        int bos = Tokenizer.BosId;
        bool needBos = bos >= 0 && (tokens.Length == 0 || tokens[0] != bos) && (Tokenizer.AddBos || tokens.Length == 0);
        return needBos ? [bos, .. tokens] : tokens;
    }
}
