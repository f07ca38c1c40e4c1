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
    private readonly PromptEncoder _prompts;
    private readonly List<int> _cached = [];
    private Sampler? _sampler;

    public Generator(ITokenEvaluator evaluator, ITokenCodec tokenizer, ChatTemplate? template)
    {
        _evaluator = evaluator ?? throw new ArgumentNullException(nameof(evaluator));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _prompts = new PromptEncoder(tokenizer, template);
    }

    /// <summary>A generator over <paramref name="session"/> of <paramref name="model"/>, using the model's own chat template.</summary>
    public static Generator ForModel(TransformerModel model, InferenceSession session) =>
        new(new SessionEvaluator(session), new TokenizerCodec(model.Tokenizer), ChatTemplate.Detect(model.Config.ChatTemplate));

    public ChatTemplate? Template => _prompts.Template;
    public ITokenCodec Tokenizer => _tokenizer;
    public ITokenEvaluator Evaluator => _evaluator;

    /// <summary>Renders a conversation with the chat template (with the assistant's generation prompt).</summary>
    public string FormatChat(IReadOnlyList<ChatMessage> messages) => _prompts.FormatChat(messages);

    /// <summary>
    /// Tokenizes a prompt: a question goes through the chat template when there is one, anything else is used as it
    /// is. As in llama.cpp, control-token text (such as "&lt;|im_start|&gt;") becomes its token, and BOS is added when the
    /// vocabulary asks for it and the text does not already start with it; an empty prompt becomes BOS alone.
    /// </summary>
    public int[] TokenizePrompt(string prompt, PromptKind kind) => _prompts.TokenizePrompt(prompt, kind);

    /// <summary>Tokenizes text as <see cref="TokenizePrompt"/> does, without a template.</summary>
    public int[] TokenizeText(string text) => _prompts.TokenizeText(text);

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

        var stream = new GenerationStream(_tokenizer, sampler, options);
        var output = new StringBuilder();
        void Emit(string text)
        {
            if (text.Length == 0) return;
            output.Append(text);
            onText?.Invoke(text);
        }

        var next = new int[1];
        while (!stream.IsFinished)
        {
            Emit(stream.Next(logits));
            if (stream.IsFinished) break;
            if (_evaluator.Position >= contextSize)
            {
                Emit(stream.End(FinishReason.Length));
                break;
            }
            next[0] = stream.LastToken;
            logits = EvaluateTracked(next);
        }
        double decodeMs = clock.Elapsed.TotalMilliseconds;

        return new GenerationResult(prompt, output.ToString(), promptTokens.Length, stream.Tokens, stream.FinishReason!.Value, prefillMs, decodeMs)
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
