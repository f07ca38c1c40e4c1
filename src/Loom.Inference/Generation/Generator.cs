using System.Diagnostics;
using System.Text;
using Loom.Inference.Chat;
using Loom.Inference.Sampling;
using Loom.Models.Architectures;
using Loom.Models.Tokenizers;

namespace Loom.Inference.Generation;

/// <summary>
/// Turns prompts into text: tokenizes (through the chat template for questions), evaluates the prompt in one batch,
/// then samples and evaluates one token at a time, streaming UTF-8-safe text that never shows a stop string.
/// Keeps track of what the evaluator has cached so that a later prompt can reuse a shared prefix.
/// </summary>
public sealed class Generator
{
    private readonly ITokenEvaluator _evaluator;
    private readonly ITokenCodec _tokenizer;
    private readonly List<int> _cached = [];
    private Sampler? _sampler;

    public Generator(ITokenEvaluator evaluator, ITokenCodec tokenizer, ChatTemplate? template)
    {
        _evaluator = evaluator ?? throw new ArgumentNullException(nameof(evaluator));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Template = template;
    }

    /// <summary>A generator over <paramref name="session"/> of <paramref name="model"/>, using the model's own chat template.</summary>
    public static Generator ForModel(TransformerModel model, InferenceSession session) =>
        new(new SessionEvaluator(session), new TokenizerCodec(model.Tokenizer), ChatTemplate.Detect(model.Config.ChatTemplate));

    public ChatTemplate? Template { get; }
    public ITokenCodec Tokenizer => _tokenizer;
    public ITokenEvaluator Evaluator => _evaluator;

    private string BosText => _tokenizer.BosId >= 0 ? _tokenizer.Piece(_tokenizer.BosId) : "";
    private string EosText => _tokenizer.EosId >= 0 ? _tokenizer.Piece(_tokenizer.EosId) : "";

    /// <summary>Renders a conversation with the chat template (with the assistant's generation prompt).</summary>
    public string FormatChat(IReadOnlyList<ChatMessage> messages)
    {
        if (Template is null) throw new InvalidOperationException("the model has no chat template (tokenizer.chat_template) that Loom recognises");
        return Template.Format(messages, addGenerationPrompt: true, BosText, EosText);
    }

    /// <summary>
    /// Tokenizes a prompt: a question goes through the chat template when there is one, anything else is used as it
    /// is. As in llama.cpp, control-token text (such as "&lt;|im_start|&gt;") becomes its token, and BOS is added when the
    /// vocabulary asks for it and the text does not already start with it; an empty prompt becomes BOS alone.
    /// </summary>
    public int[] TokenizePrompt(string prompt, PromptKind kind)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        bool chat = kind == PromptKind.Question && Template is not null;
        return TokenizeText(chat ? FormatChat([ChatMessage.User(prompt)]) : prompt);
    }

    /// <summary>Tokenizes text as <see cref="TokenizePrompt"/> does, without a template.</summary>
    public int[] TokenizeText(string text)
    {
        int[] tokens = _tokenizer.Encode(text, addSpecial: false, parseSpecial: true);
        int bos = _tokenizer.BosId;
        bool needBos = bos >= 0 && (tokens.Length == 0 || tokens[0] != bos) && (_tokenizer.AddBos || tokens.Length == 0);
        return needBos ? [bos, .. tokens] : tokens;
    }

    /// <summary>Classifies, tokenizes and generates.</summary>
    public GenerationResult Generate(string prompt, PromptKind kind, GenerationOptions options, Action<string>? onText = null) =>
        Generate(prompt, TokenizePrompt(prompt, kind), options, onText);

    /// <summary>Generates a continuation of <paramref name="promptTokens"/>; <paramref name="prompt"/> is only recorded in the result.</summary>
    public GenerationResult Generate(string prompt, ReadOnlySpan<int> promptTokens, GenerationOptions options, Action<string>? onText = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(options), options.MaxNewTokens, "the token limit must not be negative");
        if (promptTokens.IsEmpty)
            throw new ArgumentException("the prompt has no tokens and the vocabulary has no BOS token to start from");
        int contextSize = _evaluator.ContextSize;
        if (promptTokens.Length >= contextSize) throw new PromptTooLongException(promptTokens.Length, contextSize);
        foreach (int t in promptTokens)
            if ((uint)t >= (uint)_evaluator.VocabSize) throw new ArgumentException($"prompt token {t} is outside the vocabulary of {_evaluator.VocabSize}");

        var sampler = SamplerFor(options.Sampling);
        sampler.Accept(promptTokens);

        // The cache must end before the last prompt token: evaluating at least one token yields the logits to sample.
        int reused = options.ReuseCachedPrefix ? Math.Min(CommonPrefix(promptTokens), promptTokens.Length - 1) : 0;
        _evaluator.Truncate(reused);
        _cached.RemoveRange(reused, _cached.Count - reused);

        var clock = Stopwatch.StartNew();
        var toEvaluate = promptTokens[reused..];
        ReadOnlySpan<float> logits = EvaluateTracked(toEvaluate);
        double prefillMs = clock.Elapsed.TotalMilliseconds;
        clock.Restart();

        var decoder = new Utf8StreamDecoder();
        var stops = new StopStringFilter(options.StopStrings);
        var output = new StringBuilder();
        var generated = new List<int>(Math.Min(options.MaxNewTokens, 4096));
        void Emit(string text)
        {
            if (text.Length == 0) return;
            output.Append(text);
            onText?.Invoke(text);
        }

        var next = new int[1];
        FinishReason reason = FinishReason.Length;
        while (generated.Count < options.MaxNewTokens)
        {
            int token = sampler.Sample(logits);
            sampler.Accept(token);
            if (_tokenizer.IsEndOfGeneration(token)) { reason = FinishReason.EndOfGeneration; break; }
            generated.Add(token);
            Emit(stops.Push(decoder.Push(_tokenizer.TokenBytes(token))));
            if (stops.Stopped) { reason = FinishReason.Stop; break; }
            if (generated.Count == options.MaxNewTokens || _evaluator.Position >= contextSize) break;
            next[0] = token;
            logits = EvaluateTracked(next);
        }
        if (!stops.Stopped)
        {
            Emit(stops.Push(decoder.Flush()));
            Emit(stops.Flush());
            if (stops.Stopped) reason = FinishReason.Stop;
        }
        double decodeMs = clock.Elapsed.TotalMilliseconds;

        return new GenerationResult(prompt, output.ToString(), promptTokens.Length, generated, reason, prefillMs, decodeMs)
        {
            PrefillTokens = toEvaluate.Length,
        };
    }

    // Appends to the evaluator and to the record of its contents. If evaluation fails, what the cache holds is
    // unknown, so the record is emptied: the next prompt then starts from a cleared cache.
    private ReadOnlySpan<float> EvaluateTracked(ReadOnlySpan<int> tokens)
    {
        try
        {
            var logits = _evaluator.Evaluate(tokens);
            foreach (int t in tokens) _cached.Add(t);
            return logits;
        }
        catch
        {
            _cached.Clear();
            throw;
        }
    }

    private int CommonPrefix(ReadOnlySpan<int> tokens)
    {
        int n = Math.Min(tokens.Length, _cached.Count), i = 0;
        while (i < n && _cached[i] == tokens[i]) i++;
        return i;
    }

    // One sampler (and its vocabulary-sized buffers) serves every prompt run with the same settings.
    private Sampler SamplerFor(SamplerOptions options)
    {
        if (_sampler is null || !_sampler.Options.Equals(options)) _sampler = new Sampler(options, _evaluator.VocabSize);
        else _sampler.Reset();
        return _sampler;
    }
}
