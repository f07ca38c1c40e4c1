namespace Loom.Tests.Conformance;

/// <summary>Texts the conformance tests tokenize and evaluate.</summary>
public static class ConformanceText
{
    public const int SequenceLength = 64;
    public const int PromptLength = 16;
    public const int GeneratedTokens = 32;

    /// <summary>The lines of shared/prompts/seed.txt.</summary>
    public static IReadOnlyList<string> SeedLines { get; } =
        File.ReadAllLines(SharedData.PathTo("prompts/seed.txt")).Where(l => l.Length > 0).ToArray();

    /// <summary>Inputs where tokenizers commonly go wrong: whitespace runs, digits, punctuation, scripts, emoji, special-token look-alikes.</summary>
    public static IReadOnlyList<string> EdgeCases { get; } =
    [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n \n", "\t\tindented\twith tabs",
        " leading space", "trailing space ", "trailing spaces   ", "  both  ", "many     inner      spaces",
        "line one\nline two\n\nline four\n", "\n\nstarts with newlines", "ends with newline\n",
        "1", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "v1.2.3-rc4", "2024-11-26T13:45:00Z",
        "!!!", "...", "?!?!", "--==>>", "a!!b??c", "(parens) [brackets] {braces}", "@#$%^&*()_+", "'quotes' \"double\" `back`",
        "don't can't won't I'm you're they've we'll he'd", "DON'T SHOUT", "CamelCaseIdentifiers and snake_case_names",
        "café naïve résumé Ångström", "Führer Straße", "Ελληνικά κείμενα", "русский текст", "עברית", "العربية",
        "日本語のテキスト", "中文文本测试", "한국어 텍스트", "ภาษาไทย", "हिन्दी",
        "🦙", "emoji 🦙🚀 mix 👍🏽 family 👨‍👩‍👧", "✓ ✗ → ← ★",
        "<|im_start|>user\nhi<|im_end|>", "<s>hello</s>", "<s> <unk> </s>", "<|endoftext|>", "<|begin_of_text|>Hi<|eot_id|>",
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>", "< |im_start| >", "<<s>>",
        "def f(x):\n    return x ** 2  # square\n", "if (a && b) { return; }", "https://example.com/path?q=1&r=2#frag",
        "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "Hello world", " Hello world", "Hello World!",
    ];

    /// <summary>A fixed sequence of exactly <see cref="SequenceLength"/> tokens: the seed prompts, tokenized by the reference.</summary>
    public static int[] Sequence(LlamaCppReference reference) => Sequence(reference, 0);

    /// <summary>
    /// The <paramref name="index"/>-th of several distinct <see cref="SequenceLength"/>-token sequences: seed prompts
    /// from line 6·index on (wrapping), tokenized by the reference with its BOS when the vocabulary adds one.
    /// </summary>
    public static int[] Sequence(LlamaCppReference reference, int index)
    {
        var tokens = new List<int>();
        for (int i = 0; i < SeedLines.Count; i++)
        {
            var line = SeedLines[(6 * index + i) % SeedLines.Count];
            tokens.AddRange(reference.Tokenize(tokens.Count == 0 ? line : " " + line, addSpecial: tokens.Count == 0, parseSpecial: false));
            if (tokens.Count >= SequenceLength) return tokens.Take(SequenceLength).ToArray();
        }
        throw new InvalidOperationException("the seed prompts are too short to make a 64-token sequence");
    }

    /// <summary>Prompt for greedy generation: the first <see cref="PromptLength"/> tokens of the sequence.</summary>
    public static int[] Prompt(LlamaCppReference reference) => Sequence(reference).Take(PromptLength).ToArray();

    /// <summary>llama.cpp's tokenizer test cases for a vocabulary (shared/vocab/llama.cpp/ggml-vocab-NAME.gguf.inp/.out).</summary>
    public static IReadOnlyList<(string Text, int[] Expected)> LlamaCppVocabCases(string vocabName)
    {
        var inputs = File.ReadAllText(SharedData.PathTo($"vocab/llama.cpp/ggml-vocab-{vocabName}.gguf.inp"))
            .Split("\n__ggml_vocab_test__\n");
        var outputs = File.ReadAllLines(SharedData.PathTo($"vocab/llama.cpp/ggml-vocab-{vocabName}.gguf.out"));
        // The input file ends with a separator, leaving one empty entry after it.
        if (inputs.Length == outputs.Length + 1 && inputs[^1].Length == 0) inputs = inputs[..^1];
        if (inputs.Length != outputs.Length)
            throw new InvalidDataException($"ggml-vocab-{vocabName}: {inputs.Length} inputs but {outputs.Length} expected outputs");
        return inputs.Zip(outputs, (text, ids) => (text, ids.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray())).ToArray();
    }
}
