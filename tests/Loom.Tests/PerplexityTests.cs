using System.Globalization;
using System.Text.RegularExpressions;
using Loom.Cli;
using Loom.Inference;
using Loom.Models.Architectures;
using Loom.Tests.Conformance;
using Xunit.Abstractions;

namespace Loom.Tests;

/// <summary>
/// Loom's perplexity equals the one computed from llama.cpp's logits with llama-perplexity's chunking (BOS in front of
/// each chunk when the vocabulary adds one, second half of each chunk scored), and bad input fails clearly.
/// </summary>
[Collection(ConformanceCollection.Name)]
public sealed class PerplexityTests(ConformanceModels models, ITestOutputHelper output) : IDisposable
{
    private const double RelativeTolerance = 1e-4;
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-perplexity-").FullName;

    private static string StoriesModel => SharedData.PathTo("models/stories260K/stories260K.gguf");

    private static string SeedText => string.Join('\n', ConformanceText.SeedLines) + "\n";

    [Theory]
    [InlineData("llama-spm", 64, 5)]   // SentencePiece, adds BOS
    [InlineData("gpt2", 51, 4)]        // byte-level BPE, no BOS; an odd context
    public void SyntheticModelMatchesLlamaCppLogits(string name, int contextSize, int chunks)
    {
        string path = models.F32(TestModelFactory.ByName(name));
        CompareWithLlamaCpp(path, models.Reference(path), SeedText, contextSize, chunks);
    }

    [Fact]
    public void Stories260KMatchesLlamaCppLogits()
    {
        using var reference = new LlamaCppReference(StoriesModel, 128);
        string text = File.ReadAllText(Path.Combine(SharedData.RepoRoot, "data/corpus/24_key_ideas_in_complete_sentences.txt"));
        CompareWithLlamaCpp(StoriesModel, reference, text, 128, 12);
    }

    private void CompareWithLlamaCpp(string path, LlamaCppReference reference, string text, int contextSize, int maxChunks)
    {
        using var model = TransformerModel.Load(path);
        int[] tokens = Perplexity.Tokenize(model.Tokenizer, [text]);
        // llama-perplexity reads its -f file with one trailing newline dropped.
        string asRead = text.EndsWith('\n') ? text[..^1] : text;
        Assert.Equal(reference.Tokenize(asRead, addSpecial: true, parseSpecial: false), tokens);
        bool addsBos = reference.Tokenize("a", addSpecial: true, parseSpecial: false).Length > reference.Tokenize("a", addSpecial: false, parseSpecial: false).Length;
        Assert.Equal(addsBos, model.Tokenizer.AddBos);

        var chunkReports = new List<PerplexityProgress>();
        var result = Perplexity.Evaluate(model, tokens, contextSize, maxChunks, chunkReports.Add, cacheType: KvCacheType.F32);

        // The reference: llama.cpp's logits for each chunk, scored here in double precision.
        int chunks = maxChunks > 0 ? Math.Min(maxChunks, tokens.Length / contextSize) : tokens.Length / contextSize;
        int vocab = reference.VocabSize, first = contextSize / 2;
        double sum = 0, sumOfSquares = 0;
        int count = 0;
        for (int c = 0; c < chunks; c++)
        {
            int[] chunk = tokens.AsSpan(c * contextSize, contextSize).ToArray();
            if (addsBos) chunk[0] = reference.BosId;
            float[] logits = reference.EvaluateAll(chunk);
            for (int p = first; p < contextSize - 1; p++)
            {
                var row = logits.AsSpan(p * vocab, vocab);
                double max = double.NegativeInfinity, total = 0;
                foreach (float v in row) max = Math.Max(max, v);
                foreach (float v in row) total += Math.Exp(v - max);
                double nll = -(row[chunk[p + 1]] - max - Math.Log(total));
                sum += nll;
                sumOfSquares += nll * nll;
                count++;
            }
        }
        double expected = Math.Exp(sum / count);
        double mean = sum / count;
        double expectedUncertainty = Math.Sqrt((sumOfSquares / count - mean * mean) / (count - 1)) * expected;

        double error = Math.Abs(result.Value - expected) / expected;
        output.WriteLine($"{Path.GetFileName(path)}, context {contextSize}: Loom {result.Value:F6} ± {result.Uncertainty:F6}, llama.cpp logits {expected:F6} ± {expectedUncertainty:F6}; " +
                         $"relative difference {error:E2}; {result.TokensScored} tokens scored in {result.Chunks} chunks (BOS per chunk: {addsBos}), {result.Elapsed.TotalSeconds:F2} s");
        Assert.Equal(chunks, result.Chunks);
        Assert.Equal(count, result.TokensScored);
        Assert.Equal(chunks, chunkReports.Count);
        Assert.Equal(result.Value, chunkReports[^1].RunningPerplexity, 12);
        Assert.True(error <= RelativeTolerance, $"perplexity {result.Value} differs from llama.cpp's {expected} by {error:E2} (relative)");
        Assert.True(Math.Abs(result.Uncertainty - expectedUncertainty) <= 1e-3 * expectedUncertainty,
            $"uncertainty {result.Uncertainty} differs from {expectedUncertainty}");
    }

    [Fact]
    public void CommandReportsTheLibrarysFigure()
    {
        string data = Path.Combine(_dir, "text.txt");
        File.WriteAllText(data, SeedText);
        var (code, stdout, stderr) = Run("perplexity", "-m", StoriesModel, "--data", data, "--ctx", "64", "--chunks", "3", "--threads", "1");
        Assert.True(code == 0, stderr);

        using var model = TransformerModel.Load(StoriesModel);
        var expected = Perplexity.Evaluate(model, Perplexity.Tokenize(model.Tokenizer, [SeedText]), 64, 3);
        var match = Regex.Match(stdout, @"perplexity: (\d+\.\d{4}) ± (\d+\.\d{5}) \((\d+) tokens scored in 3 chunks of 64");
        Assert.True(match.Success, stdout);
        Assert.Equal(expected.Value.ToString("F4", CultureInfo.InvariantCulture), match.Groups[1].Value);
        Assert.Equal(expected.Uncertainty.ToString("F5", CultureInfo.InvariantCulture), match.Groups[2].Value);
        Assert.Equal(3 * 31, int.Parse(match.Groups[3].Value, CultureInfo.InvariantCulture));
        Assert.Contains("[3]", stderr);
    }

    [Fact]
    public void CommandReadsFoldersAndJsonl()
    {
        string folder = Path.Combine(_dir, "docs");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "a.txt"), string.Join(' ', ConformanceText.SeedLines.Take(40)));
        File.WriteAllLines(Path.Combine(folder, "b.jsonl"), ConformanceText.SeedLines.Skip(40).Select(l => $"{{\"text\": \"{l.Replace("\"", "\\\"")}\"}}"));
        var (code, stdout, stderr) = Run("perplexity", "-m", StoriesModel, "--data", folder, "--ctx", "32", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.Contains($"{1 + 60} document(s)", stderr);
        Assert.Matches(@"perplexity: \d+\.\d{4} ± \d+\.\d{5}", stdout);
    }

    [Fact]
    public void BadInputFailsClearly()
    {
        string empty = Path.Combine(_dir, "empty.txt");
        File.WriteAllText(empty, "");
        string shortText = Path.Combine(_dir, "short.txt");
        File.WriteAllText(shortText, "Once upon a time there was a cat.");
        string text = Path.Combine(_dir, "text.txt");
        File.WriteAllText(text, SeedText);

        AssertFails("holds no text", "perplexity", "-m", StoriesModel, "--data", empty);
        AssertFails("exceeds the model's context length 2048", "perplexity", "-m", StoriesModel, "--data", text, "--ctx", "4096");
        AssertFails("needs at least 128 tokens, but the text has only", "perplexity", "-m", StoriesModel, "--data", shortText, "--ctx", "64");
        AssertFails("--data PATH is required", "perplexity", "-m", StoriesModel);
        AssertFails("does not exist", "perplexity", "-m", StoriesModel, "--data", Path.Combine(_dir, "missing.txt"));
        AssertFails("must not be negative", "perplexity", "-m", StoriesModel, "--data", text, "--ctx", "-1");

        using var model = TransformerModel.Load(StoriesModel);
        var tokens = Perplexity.Tokenize(model.Tokenizer, [SeedText]);
        Assert.Contains("at least 3", Assert.Throws<ArgumentException>(() => Perplexity.Evaluate(model, tokens, 2)).Message);
        Assert.Contains("needs at least", Assert.Throws<ArgumentException>(() => Perplexity.Evaluate(model, [], 16)).Message);
    }

    private void AssertFails(string message, params string[] args)
    {
        var (code, _, stderr) = Run(args);
        Assert.Equal(1, code);
        Assert.Contains(message, stderr);
        Assert.DoesNotContain("   at ", stderr);
    }

    private static (int Code, string Out, string Error) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = LoomCli.Run(args, new CliConsole(TextReader.Null, stdout, stderr));
        return (code, stdout.ToString(), stderr.ToString());
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
