using Loom.Inference;
using Loom.Models.Architectures;
using Xunit.Abstractions;

namespace Loom.Tests.Conformance;

/// <summary>
/// Loom's logits at every position of 64-token sequences against llama.cpp's, on the same files: F32 files to within
/// 1e-4 of the logit range; files quantized by llama.cpp with the same argmax at 99% of all positions and a mean KL
/// divergence below 1e-3.
/// </summary>
[Collection(ConformanceCollection.Name)]
public class ConformanceLogitsTests(ConformanceModels models, ITestOutputHelper output)
{
    public const double F32Tolerance = 1e-4;
    public const double QuantizedMinArgMaxAgreement = 0.99;
    public const double QuantizedMaxMeanKl = 1e-3;
    /// <summary>
    /// Positions where llama.cpp's top logit leads its runner-up by no more than this fraction of the logit range are
    /// near-ties, which one activation-rounding difference can reorder (llama.cpp's own AVX2 and AVX-512 builds differ
    /// by up to 1% of the range on these files). The argmax criterion counts them; they must stay a minority, or the
    /// test models would be too flat for an argmax to mean anything.
    /// </summary>
    public const double NearTieFraction = 0.01;
    /// <summary>
    /// Quantized files are compared over many sequences (1024 positions): the few argmax differences come in
    /// clusters (one rounding difference reaches every later position of its sequence), so each figure needs many.
    /// </summary>
    public const int QuantizedSequences = 16;
    private const int SessionContext = 256;

    public static TheoryData<string> Models() => [.. TestModelFactory.All.Select(s => s.Name)];

    /// <summary>Every quantization type on the Llama model; two types on each other architecture.</summary>
    public static TheoryData<string, string> QuantizedModels() => new()
    {
        { "llama-spm", "Q8_0" }, { "llama-spm", "Q4_0" }, { "llama-spm", "Q4_K_M" }, { "llama-spm", "Q6_K" },
        { "qwen2", "Q8_0" }, { "qwen2", "Q4_K_M" },
        { "qwen3", "Q4_0" }, { "qwen3", "Q6_K" },
        { "gpt2", "Q8_0" }, { "gpt2", "Q4_K_M" },
        { "llama-bpe", "Q4_0" }, { "llama-bpe", "Q6_K" },
    };

    [Theory]
    [MemberData(nameof(Models))]
    public void F32LogitsMatchAtEveryPosition(string name)
    {
        var path = models.F32(TestModelFactory.ByName(name));
        var reference = models.Reference(path);
        int vocab = reference.VocabSize;
        var tokens = ConformanceText.Sequence(reference);
        var expected = reference.EvaluateAll(tokens);

        using var model = TransformerModel.Load(path);
        Assert.Equal(vocab, model.Config.VocabSize);
        var batched = new float[tokens.Length * vocab];
        using (var session = new InferenceSession(model, SessionContext, KvCacheType.F32))
        {
            session.EvaluateAll(tokens, batched);
            Assert.Equal(tokens.Length, session.Position);
        }
        // The same sequence fed in two uneven chunks must continue from the KV cache to the same logits.
        var chunked = new float[tokens.Length * vocab];
        using (var session = new InferenceSession(model, SessionContext, KvCacheType.F32))
        {
            const int split = 37;
            session.EvaluateAll(tokens.AsSpan(0, split), chunked.AsSpan(0, split * vocab));
            session.EvaluateAll(tokens.AsSpan(split), chunked.AsSpan(split * vocab));
        }

        double batchedDiff = Comparison.MaxRelativeDiff(expected, batched, vocab);
        double chunkedDiff = Comparison.MaxRelativeDiff(expected, chunked, vocab);
        var (min, max) = Comparison.Range(expected);
        output.WriteLine($"{name} F32: max |diff| / logit range = {batchedDiff:E2} (one batch), {chunkedDiff:E2} (two chunks); " +
                         $"argmax agreement {Comparison.ArgMaxAgreement(expected, batched, vocab):P1}; logits in [{min:F2}, {max:F2}], {tokens.Length} positions x {vocab}");
        Assert.True(batchedDiff <= F32Tolerance, $"{name}: max relative logit difference {batchedDiff:E3} exceeds {F32Tolerance:E0}");
        Assert.True(chunkedDiff <= F32Tolerance, $"{name}: max relative logit difference {chunkedDiff:E3} (chunked prefill) exceeds {F32Tolerance:E0}");
    }

    [Theory]
    [MemberData(nameof(QuantizedModels))]
    public void QuantizedLogitsAgree(string name, string quant) =>
        CompareApproximately(models.Quantized(TestModelFactory.ByName(name), quant), name, quant);

    /// <summary>F16 matrices (llama.cpp rounds activations to F16 for these dots) are held to the quantized criteria.</summary>
    [Theory]
    [InlineData("llama-spm")]
    [InlineData("qwen3")]
    public void F16LogitsAgree(string name) => CompareApproximately(models.F16(TestModelFactory.ByName(name)), name, "F16");

    /// <summary>
    /// Both engines with keys and values cached in F16 (their default), on F32 files: held to the quantized criteria,
    /// as llama.cpp also rounds the queries to F16 for the scores where Loom keeps them in F32.
    /// </summary>
    [Theory]
    [MemberData(nameof(Models))]
    public void F16CacheLogitsAgree(string name) =>
        CompareApproximately(models.F32(TestModelFactory.ByName(name)), name, "F32 weights, F16 cache", KvCacheType.F16);

    private void CompareApproximately(string path, string name, string quant, KvCacheType cacheType = KvCacheType.F32)
    {
        var reference = models.Reference(path);
        int vocab = reference.VocabSize;

        using var model = TransformerModel.Load(path);
        Assert.Equal(vocab, model.Config.VocabSize);
        // Figures are accumulated sequence by sequence: all logits at once would take gigabytes on a 100k vocabulary.
        using var session = new InferenceSession(model, SessionContext, cacheType);
        var actual = new float[ConformanceText.SequenceLength * vocab];
        int positions = 0, agreeing = 0, decisive = 0, decisiveAgreeing = 0;
        double klSum = 0, relative = 0;
        for (int s = 0; s < QuantizedSequences; s++)
        {
            var tokens = ConformanceText.Sequence(reference, s);
            var expected = reference.EvaluateAll(tokens, f16Cache: cacheType == KvCacheType.F16);
            session.Truncate(0);
            session.EvaluateAll(tokens, actual);
            int n = tokens.Length;
            agreeing += (int)Math.Round(Comparison.ArgMaxAgreement(expected, actual, vocab) * n);
            klSum += Comparison.MeanKlDivergence(expected, actual, vocab) * n;
            relative = Math.Max(relative, Comparison.MaxRelativeDiff(expected, actual, vocab));
            var (sequenceDecisiveAgreement, sequenceDecisive) = Comparison.DecisiveArgMaxAgreement(expected, actual, vocab, NearTieFraction);
            decisive += sequenceDecisive;
            decisiveAgreeing += (int)Math.Round(sequenceDecisiveAgreement * sequenceDecisive);
            foreach (var line in ArgMaxMismatches(expected, actual, vocab, s)) output.WriteLine(line);
            positions += n;
        }

        double agreement = (double)agreeing / positions, kl = klSum / positions;
        output.WriteLine($"{name} {quant}: argmax agreement {agreement:P2} ({positions - agreeing} of {positions} positions differ), mean KL {kl:E2}, " +
                         $"max |diff| / logit range {relative:E2} ({QuantizedSequences} x {ConformanceText.SequenceLength} positions x {vocab})");
        output.WriteLine($"  llama.cpp's lead exceeds {NearTieFraction:P0} of the logit range at {decisive} of {positions} positions; argmax agreement there {(double)decisiveAgreeing / Math.Max(decisive, 1):P2}");
        Assert.True(decisive >= positions / 2, $"{name} {quant}: only {decisive} of {positions} positions have a decisive argmax; the model is too flat to judge");
        Assert.True(agreement >= QuantizedMinArgMaxAgreement,
            $"{name} {quant}: argmax agrees at {agreement:P2} of {positions} positions (need {QuantizedMinArgMaxAgreement:P0})");
        Assert.True(kl < QuantizedMaxMeanKl, $"{name} {quant}: mean KL divergence {kl:E3} (need < {QuantizedMaxMeanKl:E0})");
    }

    /// <summary>
    /// Describes each position where the argmax differs, with llama.cpp's gap between its top two logits, so a reader
    /// can tell near-ties (tiny gap) from real disagreement.
    /// </summary>
    private static IEnumerable<string> ArgMaxMismatches(float[] expected, float[] actual, int vocab, int sequence)
    {
        for (int p = 0; p < expected.Length / vocab; p++)
        {
            var e = expected.AsSpan(p * vocab, vocab);
            var a = actual.AsSpan(p * vocab, vocab);
            int re = Comparison.ArgMax(e), la = Comparison.ArgMax(a);
            if (re == la) continue;
            float second = float.MinValue;
            for (int i = 0; i < vocab; i++)
                if (i != re) second = Math.Max(second, e[i]);
            yield return $"  sequence {sequence} position {p}: llama.cpp picks {re} ({e[re]:F4}, lead over its runner-up {e[re] - second:F4}), " +
                         $"Loom picks {la} (llama.cpp gives it {e[la]:F4}; Loom's logits {a[re]:F4} vs {a[la]:F4})";
        }
    }
}
