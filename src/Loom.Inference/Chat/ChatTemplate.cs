using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Loom.Inference.Chat;

/// <summary>The prompt formats Loom recognises in a model's tokenizer.chat_template.</summary>
public enum ChatTemplateFamily
{
    /// <summary>&lt;|im_start|&gt;role\n…&lt;|im_end|&gt; (Qwen, SmolLM, OpenHermes, …).</summary>
    ChatMl,
    /// <summary>[INST] &lt;&lt;SYS&gt;&gt;…&lt;&lt;/SYS&gt;&gt; … [/INST] (Llama 2 chat).</summary>
    Llama2,
    /// <summary>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\n…&lt;|eot_id|&gt; (Llama 3, 3.1, 3.2).</summary>
    Llama3,
    /// <summary>[INST] … [/INST] without a &lt;&lt;SYS&gt;&gt; block (Mistral v1, v3, v3-tekken, v7 and the original template).</summary>
    Mistral,
    /// <summary>&lt;start_of_turn&gt;user\n…&lt;end_of_turn&gt; (Gemma 1, 2, 3).</summary>
    Gemma,
    /// <summary>&lt;|user|&gt;\n…&lt;|end|&gt; (Phi-3, Phi-3.5).</summary>
    Phi3,
}

/// <summary>
/// A chat template recognised from its Jinja source and re-implemented for the messages Loom sends (plain
/// system/user/assistant text, no tools), producing the same text the Jinja template renders. Templates that refuse
/// a system message get it merged into the first user message, as llama.cpp's template polyfills do.
/// </summary>
public sealed partial class ChatTemplate
{
    private enum Variant
    {
        Default,
        // Llama 3.1 / 3.2: a system header with the knowledge cut-off and today's date always comes first.
        Llama31Dated,
        // Mistral "v1": " [INST] " with a leading space, system text prefixed to the first user message.
        MistralV1,
        // Mistral "v3": "[INST] …[/INST]", system text prefixed to the last user message, assistant " " + trimmed.
        MistralV3,
        // Mistral "v3-tekken": "[INST]…[/INST]" without spaces.
        MistralV3Tekken,
        // Mistral "v7": [SYSTEM_PROMPT] … [/SYSTEM_PROMPT].
        MistralV7,
        // Gemma 3: system text + "\n\n" prefixed to the first user turn.
        Gemma3,
        // Phi-3 mini/medium: no system role, "<|assistant|>\n" written after every user turn.
        Phi3NoSystem,
    }

    private readonly Variant _variant;
    private readonly string? _defaultSystem;
    private readonly bool _writesBos;
    private readonly bool _usesToday;
    // Qwen3: earlier assistant turns keep only the text after their "</think>" reasoning block.
    private readonly bool _dropsPastReasoning;

    private ChatTemplate(ChatTemplateFamily family, Variant variant, string source, string? defaultSystem)
    {
        Family = family;
        _variant = variant;
        Source = source;
        _defaultSystem = defaultSystem;
        _writesBos = source.Contains("bos_token", StringComparison.Ordinal);
        // Llama 3.2 asks strftime_now for the date; for templates with the ipython role (3.1 and later) llama.cpp
        // passes date_string = today. Otherwise the template's fixed default date stands.
        _usesToday = source.Contains("strftime_now", StringComparison.Ordinal) ||
                     source.Contains("<|start_header_id|>ipython<|end_header_id|>", StringComparison.Ordinal);
        _dropsPastReasoning = family == ChatTemplateFamily.ChatMl && source.Contains("</think>", StringComparison.Ordinal);
    }

    public ChatTemplateFamily Family { get; }

    /// <summary>The Jinja source this template was recognised from.</summary>
    public string Source { get; }

    /// <summary>The date a dated template (Llama 3.1+) writes; by default today where llama.cpp supplies it.</summary>
    public DateTime? Today { get; set; }

    /// <summary>Recognises a template's family, or returns null when the text is empty or an unknown format.</summary>
    public static ChatTemplate? Detect(string? source)
    {
        if (string.IsNullOrWhiteSpace(source)) return null;
        bool Has(string s) => source.Contains(s, StringComparison.Ordinal);

        if (Has("<|im_start|>") && !Has("<|im_sep|>"))
            return new(ChatTemplateFamily.ChatMl, Variant.Default, source, ChatMlDefaultSystem(source));
        if (Has("<|start_header_id|>"))
            return new(ChatTemplateFamily.Llama3, Has("Cutting Knowledge Date") ? Variant.Llama31Dated : Variant.Default, source, null);
        if (Has("<start_of_turn>"))
            return new(ChatTemplateFamily.Gemma, Has("first_user_prefix") ? Variant.Gemma3 : Variant.Default, source, null);
        if (Has("<|end|>") && (Has("<|user|>") || Has("'<|' + message['role'] + '|>'")))
        {
            bool systemRole = Has("<|system|>") || Has("'<|' + message['role'] + '|>'");
            return new(ChatTemplateFamily.Phi3, systemRole ? Variant.Default : Variant.Phi3NoSystem, source, null);
        }
        if (Has("[INST]"))
        {
            if (Has("<<SYS>>")) return new(ChatTemplateFamily.Llama2, Variant.Default, source, null);
            Variant v = Has("[SYSTEM_PROMPT]") ? Variant.MistralV7
                : Has("' [INST] '") || Has("\" [INST] \"") ? Variant.MistralV1
                : Has("\"[INST]\" +") || Has("'[INST]' +") ? Variant.MistralV3Tekken
                : Has("[/INST]\"") && Has("system_message") ? Variant.MistralV3
                : Variant.Default;
            return new(ChatTemplateFamily.Mistral, v, source, null);
        }
        return null;
    }

    /// <summary>
    /// Renders the conversation as the template would with add_generation_prompt set as given.
    /// <paramref name="bosToken"/> and <paramref name="eosToken"/> are the texts of the model's BOS/EOS tokens.
    /// </summary>
    public string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string bosToken = "", string eosToken = "")
    {
        ArgumentNullException.ThrowIfNull(messages);
        foreach (var m in messages)
            if (m.Role is not ("system" or "user" or "assistant"))
                throw new ArgumentException($"unknown chat role '{m.Role}' (expected system, user or assistant)");
        return Family switch
        {
            ChatTemplateFamily.ChatMl => FormatChatMl(messages, addGenerationPrompt),
            ChatTemplateFamily.Llama2 => FormatLlama2(messages, bosToken, eosToken),
            ChatTemplateFamily.Llama3 => FormatLlama3(messages, addGenerationPrompt, bosToken),
            ChatTemplateFamily.Mistral => FormatMistral(messages, bosToken, eosToken),
            ChatTemplateFamily.Gemma => FormatGemma(messages, addGenerationPrompt, bosToken),
            ChatTemplateFamily.Phi3 => FormatPhi3(messages, addGenerationPrompt, bosToken, eosToken),
            _ => throw new InvalidOperationException($"no formatter for {Family}"),
        };
    }

    private string FormatChatMl(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        var sb = new StringBuilder();
        if (_defaultSystem is not null && (messages.Count == 0 || messages[0].Role != "system"))
            sb.Append("<|im_start|>system\n").Append(_defaultSystem).Append("<|im_end|>\n");
        foreach (var m in messages)
        {
            string content = m.Content;
            int think = _dropsPastReasoning && m.Role == "assistant" ? content.LastIndexOf("</think>", StringComparison.Ordinal) : -1;
            if (think >= 0) content = content[(think + "</think>".Length)..].TrimStart('\n');
            sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(content).Append("<|im_end|>\n");
        }
        if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }

    private static string FormatLlama2(IReadOnlyList<ChatMessage> messages, string bos, string eos)
    {
        var (system, turns) = SplitSystem(messages);
        var sb = new StringBuilder();
        for (int i = 0; i < turns.Count; i++)
        {
            string content = turns[i].Content;
            if (i == 0 && system is not null) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
            if (turns[i].Role == "user") sb.Append(bos).Append("[INST] ").Append(JinjaTrim(content)).Append(" [/INST]");
            else sb.Append(' ').Append(JinjaTrim(content)).Append(' ').Append(eos);
        }
        return sb.ToString();
    }

    private string FormatLlama3(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string bos)
    {
        var sb = new StringBuilder(_writesBos ? bos : "");
        IReadOnlyList<ChatMessage> turns = messages;
        if (_variant == Variant.Llama31Dated)
        {
            var (system, rest) = SplitSystem(messages);
            turns = rest;
            var date = Today ?? (_usesToday ? DateTime.Now : new DateTime(2024, 7, 26));
            sb.Append("<|start_header_id|>system<|end_header_id|>\n\n")
              .Append("Cutting Knowledge Date: December 2023\n")
              .Append("Today Date: ").Append(date.ToString("dd MMM yyyy", CultureInfo.InvariantCulture)).Append("\n\n")
              .Append(JinjaTrim(system ?? "")).Append("<|eot_id|>");
        }
        foreach (var m in turns)
            sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(JinjaTrim(m.Content)).Append("<|eot_id|>");
        if (addGenerationPrompt) sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        return sb.ToString();
    }

    private string FormatMistral(IReadOnlyList<ChatMessage> messages, string bos, string eos)
    {
        var sb = new StringBuilder(_writesBos ? bos : "");
        if (_variant == Variant.MistralV7)
        {
            foreach (var m in messages)
            {
                if (m.Role == "system") sb.Append("[SYSTEM_PROMPT] ").Append(m.Content).Append("[/SYSTEM_PROMPT]");
                else if (m.Role == "user") sb.Append("[INST] ").Append(m.Content).Append("[/INST]");
                else sb.Append(' ').Append(m.Content).Append(eos);
            }
            return sb.ToString();
        }

        var (system, turns) = _variant == Variant.Default ? (null, MergeSystemIntoFirstUser(messages, "\n")) : SplitSystem(messages);
        int lastUser = -1;
        for (int i = 0; i < turns.Count; i++) if (turns[i].Role == "user") lastUser = i;
        for (int i = 0; i < turns.Count; i++)
        {
            var m = turns[i];
            if (m.Role == "user")
            {
                switch (_variant)
                {
                    case Variant.MistralV1:
                        sb.Append(" [INST] ");
                        if (i == 0 && system is not null) sb.Append(system).Append("\n\n");
                        sb.Append(m.Content).Append(" [/INST]");
                        break;
                    case Variant.MistralV3:
                    case Variant.MistralV3Tekken:
                        sb.Append(_variant == Variant.MistralV3 ? "[INST] " : "[INST]");
                        // These templates put the system text into the final user message ("loop.last").
                        if (i == turns.Count - 1 && i == lastUser && system is not null) sb.Append(system).Append("\n\n");
                        sb.Append(m.Content).Append("[/INST]");
                        break;
                    default:
                        sb.Append("[INST] ").Append(m.Content).Append(" [/INST]");
                        break;
                }
            }
            else
            {
                switch (_variant)
                {
                    case Variant.MistralV1: sb.Append(' ').Append(m.Content).Append(eos); break;
                    case Variant.MistralV3: sb.Append(' ').Append(JinjaTrim(m.Content)).Append(eos); break;
                    default: sb.Append(m.Content).Append(eos); break;
                }
            }
        }
        return sb.ToString();
    }

    private string FormatGemma(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string bos)
    {
        var sb = new StringBuilder(_writesBos ? bos : "");
        IReadOnlyList<ChatMessage> turns;
        string firstUserPrefix = "";
        if (_variant == Variant.Gemma3)
        {
            var (system, rest) = SplitSystem(messages);
            turns = rest;
            if (system is not null) firstUserPrefix = system + "\n\n";
        }
        else
        {
            turns = MergeSystemIntoFirstUser(messages, "\n");
        }
        for (int i = 0; i < turns.Count; i++)
        {
            var m = turns[i];
            sb.Append("<start_of_turn>").Append(m.Role == "assistant" ? "model" : m.Role).Append('\n');
            if (i == 0) sb.Append(firstUserPrefix);
            sb.Append(JinjaTrim(m.Content)).Append("<end_of_turn>\n");
        }
        if (addGenerationPrompt) sb.Append("<start_of_turn>model\n");
        return sb.ToString();
    }

    private string FormatPhi3(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string bos, string eos)
    {
        var sb = new StringBuilder(_writesBos ? bos : "");
        if (_variant == Variant.Phi3NoSystem)
        {
            foreach (var m in MergeSystemIntoFirstUser(messages, "\n"))
            {
                if (m.Role == "user") sb.Append("<|user|>\n").Append(m.Content).Append("<|end|>\n<|assistant|>\n");
                else sb.Append(m.Content).Append("<|end|>\n");
            }
            return sb.ToString();
        }
        foreach (var m in messages)
            sb.Append("<|").Append(m.Role).Append("|>\n").Append(m.Content).Append("<|end|>\n");
        if (addGenerationPrompt) sb.Append("<|assistant|>\n");
        else if (Source.Contains("eos_token", StringComparison.Ordinal)) sb.Append(eos);
        return sb.ToString();
    }

    private static (string? System, IReadOnlyList<ChatMessage> Turns) SplitSystem(IReadOnlyList<ChatMessage> messages) =>
        messages.Count > 0 && messages[0].Role == "system" ? (messages[0].Content, messages.Skip(1).ToList()) : (null, messages);

    /// <summary>For templates without a system role: the system text joins the first user message.</summary>
    private static IReadOnlyList<ChatMessage> MergeSystemIntoFirstUser(IReadOnlyList<ChatMessage> messages, string separator)
    {
        var (system, turns) = SplitSystem(messages);
        if (system is null) return turns;
        if (turns.Count == 0 || turns[0].Role != "user") return [ChatMessage.User(system), .. turns];
        return [ChatMessage.User(system + separator + turns[0].Content), .. turns.Skip(1)];
    }

    /// <summary>Jinja's trim / Python's str.strip(): removes leading and trailing whitespace.</summary>
    private static string JinjaTrim(string s) => s.Trim();

    /// <summary>The built-in system prompt a ChatML template writes when the conversation has none (Qwen 2/2.5, SmolLM).</summary>
    private static string? ChatMlDefaultSystem(string source)
    {
        var match = DefaultSystemLiteral().Match(source);
        return match.Success ? UnescapeJinjaString(match.Groups["text"].Value) : null;
    }

    // A single string literal holding "<|im_start|>system\n" + fixed text + "<|im_end|>".
    [GeneratedRegex(@"<\|im_start\|>system\\n(?<text>[^'""{}]*?)<\|im_end\|>")]
    private static partial Regex DefaultSystemLiteral();

    private static string UnescapeJinjaString(string s)
    {
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] != '\\' || i + 1 == s.Length) { sb.Append(s[i]); continue; }
            char c = s[++i];
            sb.Append(c switch { 'n' => '\n', 't' => '\t', 'r' => '\r', _ => c });
        }
        return sb.ToString();
    }
}
