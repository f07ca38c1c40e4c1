using Loom.Inference.Chat;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;
using Loom.Tests.Conformance;
using Loom.Training;
using Xunit.Abstractions;

namespace Loom.Tests;

/// <summary>The BPE tokenizer trainer: the merges it learns, the GGUF it writes, and llama.cpp reading that GGUF alike.</summary>
public sealed class BpeTrainerTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-bpe-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static IReadOnlyList<string> Primer() =>
        Directory.GetFiles(Path.Combine(SharedData.RepoRoot, "data", "corpus"), "*.txt").Order(StringComparer.Ordinal).Select(File.ReadAllText).ToList();

    private string Save(BpeVocabulary vocabulary)
    {
        string path = Path.Combine(_dir, $"tokenizer-{Guid.NewGuid():N}.gguf");
        vocabulary.Save(path);
        return path;
    }

    [Fact]
    public void MergesTheMostFrequentPairFirst()
    {
        // Words "hug", " hug" ×2, " pug", " pun": pair counts u+g 4, h+u 3, ' '+h 2, ' '+p 2, p+u 2, u+n 1.
        // After u+g: h+ug 3 leads.
        var vocabulary = BpeTrainer.Train(["hug hug hug pug pun"], vocabSize: 3 + 256 + 2);
        using var file = GgufFile.Open(Save(vocabulary));
        Assert.Equal(["u g", "h ug"], file.GetArray<string>("tokenizer.ggml.merges")!);
        string[] tokens = file.GetArray<string>("tokenizer.ggml.tokens")!;
        Assert.Equal(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], tokens[..3]);
        Assert.Equal(["ug", "hug"], tokens[^2..]);
    }

    [Fact]
    public void TrainingIsDeterministicAndStopsWhenNoPairRepeats()
    {
        var first = BpeTrainer.Train(Primer(), 600);
        var second = BpeTrainer.Train(Primer(), 600);
        Assert.Equal(first.TokenStrings(), second.TokenStrings());
        Assert.Equal(600, first.VocabSize);

        var tiny = BpeTrainer.Train(["abcd"], 1000); // every pair occurs once: nothing to merge
        Assert.Equal(0, tiny.MergeCount);
        Assert.Equal(3 + 256, tiny.VocabSize);
    }

    [Fact]
    public void TheSavedTokenizerCompressesItsTextAndRoundTripsAnyText()
    {
        var primer = Primer();
        var vocabulary = BpeTrainer.Train(primer, 2048);
        using var file = GgufFile.Open(Save(vocabulary));
        var tokenizer = Tokenizer.FromGguf(file);
        Assert.Equal(2048, tokenizer.VocabSize);

        string sample = primer[3];
        int[] ids = tokenizer.Encode(sample, addSpecial: false, parseSpecial: false);
        double bytesPerToken = (double)System.Text.Encoding.UTF8.GetByteCount(sample) / ids.Length;
        output.WriteLine($"{bytesPerToken:F2} bytes per token on a training file");
        Assert.True(bytesPerToken > 3, $"only {bytesPerToken:F2} bytes per token");

        foreach (string text in ConformanceText.EdgeCases.Concat(["naïve café 東京 🤖 — ünïcödé", "  two  spaces\n\n\ttab"]))
            Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text, addSpecial: false, parseSpecial: false)));
    }

    [Fact]
    public void SpecialTokensAreControlTokensAndTheTemplateIsChatMl()
    {
        var vocabulary = BpeTrainer.Train(Primer(), 1024);
        using var file = GgufFile.Open(Save(vocabulary));
        var tokenizer = Tokenizer.FromGguf(file);
        Assert.Equal(0, tokenizer.BosId);
        Assert.Equal(0, tokenizer.EosId);
        Assert.Equal(2, tokenizer.EotId);
        int[] ids = tokenizer.Encode("<|im_start|>user\nHi<|im_end|>", addSpecial: true, parseSpecial: true);
        Assert.Equal([0, 1], ids[..2]);
        Assert.Equal(2, ids[^1]);
        Assert.DoesNotContain(1, tokenizer.Encode("<|im_start|>", addSpecial: false, parseSpecial: false));

        var template = ChatTemplate.Detect(file.GetString("tokenizer.chat_template")!);
        Assert.Equal(ChatTemplateFamily.ChatMl, template!.Family);
    }

    [Fact]
    public void BadArgumentsFailClearly()
    {
        Assert.Contains("no room for merges", Assert.Throws<ArgumentException>(() => BpeTrainer.Train(["text"], 259)).Message);
        Assert.Contains("no words", Assert.Throws<InvalidDataException>(() => BpeTrainer.Train(["<|endoftext|>"], 300)).Message);
        Assert.Contains("distinct", Assert.Throws<ArgumentException>(() => BpeTrainer.Train(["text"], 300, ["<a>", "<a>"])).Message);
    }

    /// <summary>
    /// A model exported with the trained tokenizer, read by llama.cpp: the same vocabulary, special tokens, pieces and
    /// token ids as Loom (seed prompts, edge cases and random strings, with and without special-token parsing).
    /// </summary>
    [Fact]
    public void LlamaCppTokenizesExactlyAsLoomWithTheTrainedVocabulary()
    {
        var vocabulary = BpeTrainer.Train(Primer(), 1024);
        string tokenizerPath = Save(vocabulary);
        string modelPath = Path.Combine(_dir, "model.gguf");
        using (var tokenizerFile = GgufFile.Open(tokenizerPath))
        {
            var encoder = new GgufTokenEncoder(tokenizerFile);
            var decoder = new Decoder(new ModelShape { VocabSize = encoder.VocabSize, Dim = 32, Layers = 1, Heads = 2, KvHeads = 1, Hidden = 64, Context = 64 });
            decoder.Initialize(7);
            GgufExport.Write(modelPath, decoder, encoder, ExportPrecision.F32);
        }

        TokenizerLlamaCppTests.CompareVocabulary(modelPath);
        TokenizerLlamaCppTests.CompareEncoding(modelPath, randomStrings: 200);
    }
}
