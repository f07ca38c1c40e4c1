using System.Collections.Concurrent;
using System.Text;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;

namespace Loom.Tests;

/// <summary>
/// llama.cpp's tokenizer test suites (models/ggml-vocab-*.gguf with .inp/.out, as test-tokenizer-0 runs them):
/// the .inp file holds the strings, each followed by a line "__ggml_vocab_test__"; the .out file one line of expected
/// ids per string, tokenized without BOS/EOS and without parsing special tokens.
/// </summary>
public class TokenizerSuiteTests
{
    public static readonly string[] Suites = ["llama-spm", "phi-3", "gpt-2", "mpt", "refact", "deepseek-coder"];

    private static readonly ConcurrentDictionary<string, Tokenizer> Tokenizers = new();

    internal static Tokenizer Load(string suite) => Tokenizers.GetOrAdd(suite, name =>
    {
        using var file = GgufFile.Open(SharedData.PathTo($"vocab/llama.cpp/ggml-vocab-{name}.gguf"));
        return Tokenizer.FromGguf(file);
    });

    internal static List<(string Text, int[] Ids)> ReadCases(string suite)
    {
        const string separator = "\n__ggml_vocab_test__\n";
        string input = Encoding.UTF8.GetString(File.ReadAllBytes(SharedData.PathTo($"vocab/llama.cpp/ggml-vocab-{suite}.gguf.inp")));
        var texts = new List<string>();
        for (int pos = 0; pos < input.Length;)
        {
            int next = input.IndexOf(separator, pos, StringComparison.Ordinal);
            if (next < 0) { texts.Add(input[pos..]); break; }
            texts.Add(input[pos..next]);
            pos = next + separator.Length;
        }
        var lines = File.ReadAllText(SharedData.PathTo($"vocab/llama.cpp/ggml-vocab-{suite}.gguf.out")).Split('\n');
        if (lines[^1].Length == 0) lines = lines[..^1];
        Assert.Equal(texts.Count, lines.Length);
        return texts.Select((text, i) => (text, lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray())).ToList();
    }

    public static TheoryData<string> SuiteNames() => new(Suites);

    [Theory]
    [MemberData(nameof(SuiteNames))]
    public void MatchesLlamaCppExpectedIds(string suite)
    {
        var tokenizer = Load(suite);
        var cases = ReadCases(suite);
        Assert.True(cases.Count >= 40, $"{suite}: only {cases.Count} cases read");
        var failures = new List<string>();
        foreach (var (text, expected) in cases)
        {
            var actual = tokenizer.Encode(text, addSpecial: false, parseSpecial: false);
            if (!actual.SequenceEqual(expected))
                failures.Add($"'{Escape(text)}': expected [{string.Join(' ', expected)}] got [{string.Join(' ', actual)}]");
        }
        Assert.True(failures.Count == 0, $"{suite}: {cases.Count - failures.Count}/{cases.Count} match\n" + string.Join('\n', failures));
    }

    /// <summary>
    /// test-tokenizer-1-spm/-bpe's vocabulary round trip: each token rendered with special tokens, tokenized again with
    /// special parsing, must render the same. Pieces that are not valid UTF-8 on their own (single byte tokens) are skipped:
    /// llama.cpp's BPE test skips them too, and Loom's Encode takes text, which cannot hold a stray byte.
    /// </summary>
    [Theory]
    [MemberData(nameof(SuiteNames))]
    public void EveryTokenRoundTrips(string suite)
    {
        var tokenizer = Load(suite);
        var strict = new UTF8Encoding(false, throwOnInvalidBytes: true);
        int checkedTokens = 0;
        var failures = new List<string>();
        for (int id = 0; id < tokenizer.VocabSize && failures.Count < 10; id++)
        {
            byte[] piece = tokenizer.DecodeBytes([id], renderSpecial: true);
            string text;
            try { text = strict.GetString(piece); }
            catch (DecoderFallbackException) { continue; }
            var ids = tokenizer.Encode(text, addSpecial: false, parseSpecial: true);
            checkedTokens++;
            if (!tokenizer.DecodeBytes(ids, renderSpecial: true).AsSpan().SequenceEqual(piece))
                failures.Add($"token {id} '{Escape(text)}' -> [{string.Join(' ', ids)}] -> '{Escape(tokenizer.Decode(ids, true))}'");
        }
        Assert.True(checkedTokens > tokenizer.VocabSize * 9 / 10, $"only {checkedTokens} of {tokenizer.VocabSize} tokens were checked");
        Assert.True(failures.Count == 0, string.Join('\n', failures));
    }

    /// <summary>test-tokenizer-1's code point round trip (every code point but surrogates and U+40000..U+E0000; U+2581 is exempt).</summary>
    [Theory]
    [InlineData("llama-spm")]
    [InlineData("gpt-2")]
    public void EveryCodePointRoundTrips(string suite)
    {
        var tokenizer = Load(suite);
        bool parseSpecial = suite == "llama-spm"; // as the SPM and BPE tests call it
        var failures = new List<string>();
        for (int cp = 0; cp < 0x110000 && failures.Count < 10; cp++)
        {
            if (cp is >= 0xD800 and <= 0xDFFF || cp is >= 0x40000 and <= 0xE0000 || cp == 0x2581) continue;
            string text = char.ConvertFromUtf32(cp);
            var ids = tokenizer.Encode(text, addSpecial: false, parseSpecial);
            string back = tokenizer.Decode(ids, renderSpecial: true);
            if (back != text) failures.Add($"U+{cp:X4} -> [{string.Join(' ', ids)}] -> '{Escape(back)}'");
        }
        Assert.True(failures.Count == 0, string.Join('\n', failures));
    }

    [Fact]
    public void WordPieceVocabularyIsRejectedClearly()
    {
        using var file = GgufFile.Open(SharedData.PathTo("vocab/llama.cpp/ggml-vocab-bert-bge.gguf"));
        var error = Assert.Throws<NotSupportedException>(() => Tokenizer.FromGguf(file));
        Assert.Contains("bert", error.Message);
    }

    internal static string Escape(string s) => s.Replace("\n", "\\n").Replace("\t", "\\t").Replace("\r", "\\r");
}
