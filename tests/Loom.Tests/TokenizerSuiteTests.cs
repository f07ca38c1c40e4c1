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

    [Fact]
    public void WordPieceVocabularyIsRejectedClearly()
    {
        using var file = GgufFile.Open(SharedData.PathTo("vocab/llama.cpp/ggml-vocab-bert-bge.gguf"));
        var error = Assert.Throws<NotSupportedException>(() => Tokenizer.FromGguf(file));
        Assert.Contains("bert", error.Message);
    }

    internal static string Escape(string s) => s.Replace("\n", "\\n").Replace("\t", "\\t").Replace("\r", "\\r");
}
