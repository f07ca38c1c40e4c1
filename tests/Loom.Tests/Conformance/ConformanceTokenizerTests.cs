using System.Text;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;
using Xunit.Abstractions;

namespace Loom.Tests.Conformance;

/// <summary>Loom's tokenizer must produce exactly llama.cpp's token ids for every vocabulary, text and flag combination.</summary>
[Collection(ConformanceCollection.Name)]
public class ConformanceTokenizerTests(ConformanceModels models, ITestOutputHelper output)
{
    /// <summary>Each vocabulary with the generated model that carries it.</summary>
    public static TheoryData<string, string> Vocabularies() => new()
    {
        { "llama-spm", TestModelFactory.Llama.Name },
        { "gpt2", TestModelFactory.Gpt2.Name },
        { "llama-bpe", TestModelFactory.LlamaBpe.Name },
        { "qwen2", TestModelFactory.Qwen2.Name },
    };

    private static readonly (bool AddSpecial, bool ParseSpecial)[] FlagCombinations = [(false, false), (false, true), (true, false), (true, true)];

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void SeedPromptsTokenizeIdentically(string vocabulary, string model) =>
        Compare(vocabulary, model, ConformanceText.SeedLines.Concat(ConformanceText.SeedLines.Select(l => " " + l)).ToList());

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void EdgeCasesTokenizeIdentically(string vocabulary, string model)
    {
        var texts = ConformanceText.EdgeCases.ToList();
        // llama.cpp's own tokenizer cases for the two vocabularies it ships tests for.
        if (vocabulary == "llama-spm") texts.AddRange(ConformanceText.LlamaCppVocabCases("llama-spm").Select(c => c.Text));
        if (vocabulary == "gpt2") texts.AddRange(ConformanceText.LlamaCppVocabCases("gpt-2").Select(c => c.Text));
        Compare(vocabulary, model, texts);
    }

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void RandomMixedTextTokenizesIdentically(string vocabulary, string model) =>
        Compare(vocabulary, model, RandomTexts(seed: 42, count: 300));

    private void Compare(string vocabulary, string model, IReadOnlyList<string> texts)
    {
        var path = models.F32(TestModelFactory.ByName(model));
        var reference = models.Reference(path);
        using var file = GgufFile.Open(path);
        var tokenizer = Tokenizer.FromGguf(file);
        Assert.Equal(reference.VocabSize, tokenizer.VocabSize);
        Assert.Equal(reference.BosId, tokenizer.BosId);
        Assert.Equal(reference.EosId, tokenizer.EosId);

        var mismatches = new List<string>();
        int compared = 0, tokens = 0;
        foreach (var text in texts)
        {
            foreach (var (addSpecial, parseSpecial) in FlagCombinations)
            {
                var expected = reference.Tokenize(text, addSpecial, parseSpecial);
                var actual = tokenizer.Encode(text, addSpecial, parseSpecial);
                compared++;
                tokens += expected.Length;
                if (!expected.AsSpan().SequenceEqual(actual))
                    mismatches.Add($"{Show(text)} (addSpecial {addSpecial}, parseSpecial {parseSpecial}): llama.cpp [{string.Join(' ', expected)}], Loom [{string.Join(' ', actual)}]");
            }
        }
        output.WriteLine($"{vocabulary}: {compared - mismatches.Count}/{compared} encodings identical ({texts.Count} texts x {FlagCombinations.Length} flag combinations, {tokens} reference tokens)");
        foreach (var m in mismatches.Take(20)) output.WriteLine(m);
        Assert.True(mismatches.Count == 0, $"{mismatches.Count} of {compared} encodings differ from llama.cpp; first: {mismatches.FirstOrDefault()}");
    }

    /// <summary>Seeded random strings built from fragments that stress pre-tokenizers and merges.</summary>
    private static List<string> RandomTexts(int seed, int count)
    {
        string[] fragments =
        [
            " ", "  ", "\n", "\t", "\r\n", "the", "The", " quick", "brown", "fox", "'s", "'ll", "n't", "123", "4567", "0", "3.5", "!", "?!",
            "...", ",", "-", "_", "(", ")", "\"", "é", "ü", "ß", "ñ", "日本", "中文", "한", "ру", "🦙", "👍🏽", "e\u0301", "\u00a0", "Hello",
            "world", "<s>", "</s>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<unk>", "<", ">", "|", "[", "]", "{", "}", "#", "$",
            "tokenization", "supercalifragilistic", "ABC", "xyz", "a", "I", "∑", "→", "\u200b",
        ];
        var random = new Random(seed);
        var texts = new List<string>(count);
        for (int i = 0; i < count; i++)
        {
            var sb = new StringBuilder();
            int parts = random.Next(1, 12);
            for (int p = 0; p < parts; p++) sb.Append(fragments[random.Next(fragments.Length)]);
            texts.Add(sb.ToString());
        }
        return texts;
    }

    private static string Show(string text) =>
        "\"" + text.Replace("\\", "\\\\").Replace("\n", "\\n").Replace("\r", "\\r").Replace("\t", "\\t") + "\"";
}
