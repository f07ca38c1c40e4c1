using LLama.Native;
using Loom.Inference.Sampling;

namespace Loom.Tests;

/// <summary>
/// Loom's sampler chain against llama.cpp's own samplers (through LLamaSharp's native library, no model needed):
/// after penalties → top-k → top-p → min-p → temperature the surviving candidates and their logits must agree.
/// </summary>
public class SamplerLlamaCppTests
{
    static SamplerLlamaCppTests() => LlamaCppReference.EnsureNativeLibrary();

    /// <summary>llama.cpp's filters in Loom's order: penalties → top-k → top-p → min-p → temperature (no final draw).</summary>
    private static SafeLLamaSamplerChainHandle LlamaCppFilterChain(SamplerOptions o)
    {
        var chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        chain.AddPenalties(o.PenaltyLastN, o.RepeatPenalty, o.FrequencyPenalty, o.PresencePenalty);
        chain.AddTopK(o.TopK);
        chain.AddTopP(o.TopP, 1);
        chain.AddMinP(o.MinP, 1);
        chain.AddTemperature(o.Temperature);
        return chain;
    }

    private static Dictionary<int, float> LlamaCppCandidates(float[] logits, SamplerOptions o, int[] history)
    {
        using var chain = LlamaCppFilterChain(o);
        foreach (int t in history) chain.Accept(t);

        var array = LLamaTokenDataArray.Create(logits);
        using (LLamaTokenDataArrayNative.Create(array, out var native))
        {
            chain.Apply(ref native);
            var result = new Dictionary<int, float>();
            var data = native.Data;
            for (int i = 0; i < (int)native.Size; i++) result[(int)data[i].ID] = data[i].Logit;
            return result;
        }
    }

    private static Dictionary<int, float> LoomCandidates(float[] logits, SamplerOptions o, int[] history)
    {
        var sampler = new Sampler(o, logits.Length);
        sampler.Accept(history);
        sampler.Filter(logits);
        var result = new Dictionary<int, float>();
        for (int i = 0; i < sampler.CandidateIds.Length; i++) result[sampler.CandidateIds[i]] = sampler.CandidateLogits[i];
        return result;
    }

    public static TheoryData<string, SamplerOptions> Settings => new()
    {
        { "llama.cpp defaults", new SamplerOptions() },
        { "top-p only", new SamplerOptions { TopK = 0, TopP = 0.9f, MinP = 0, Temperature = 1 } },
        { "min-p only", new SamplerOptions { TopK = 0, TopP = 1, MinP = 0.1f, Temperature = 1.3f } },
        { "narrow", new SamplerOptions { TopK = 5, TopP = 0.5f, MinP = 0, Temperature = 0.5f } },
        { "penalties", new SamplerOptions { TopK = 100, TopP = 0.98f, MinP = 0.02f, Temperature = 0.7f, RepeatPenalty = 1.3f,
                                            FrequencyPenalty = 0.2f, PresencePenalty = 0.4f, PenaltyLastN = 16 } },
        { "penalties, full vocabulary", new SamplerOptions { TopK = 0, TopP = 1, MinP = 0, Temperature = 1, RepeatPenalty = 1.1f,
                                            FrequencyPenalty = 0.5f, PenaltyLastN = 64 } },
    };

    [Theory]
    [MemberData(nameof(Settings))]
    public void CandidatesMatchLlamaCpp(string name, SamplerOptions options)
    {
        var rng = new Random(name.Length * 31 + 7);
        for (int round = 0; round < 5; round++)
        {
            // Peaked logits like a language model's: a few strong candidates over a long tail.
            var logits = Enumerable.Range(0, 3000).Select(_ => (float)(rng.NextDouble() * 6 - 3 + (rng.NextDouble() < 0.01 ? 8 : 0))).ToArray();
            var strongest = logits.Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(30).Select(p => p.i).ToArray();
            // History drawn mostly from the strongest tokens (with repeats) so the penalties change the outcome.
            var history = Enumerable.Range(0, 40).Select(_ => rng.NextDouble() < 0.8 ? strongest[rng.Next(strongest.Length)] : rng.Next(3000)).ToArray();

            var expected = LlamaCppCandidates(logits, options, history);
            var actual = LoomCandidates(logits, options, history);
            Assert.True(expected.Keys.Order().SequenceEqual(actual.Keys.Order()),
                $"{name}, round {round}: llama.cpp kept {expected.Count} candidates, Loom {actual.Count}");
            foreach (var (id, logit) in expected)
                Assert.True(MathF.Abs(logit - actual[id]) <= 1e-5f * MathF.Max(1, MathF.Abs(logit)), $"{name}: token {id}: llama.cpp {logit}, Loom {actual[id]}");
        }
    }

    [Theory]
    [MemberData(nameof(Settings))]
    public void SeededDrawsMatchLlamaCpp(string name, SamplerOptions settings)
    {
        foreach (uint seed in new uint[] { 0, 42, 3_000_000_007 })
        {
            var options = settings with { Seed = seed };
            using var chain = LlamaCppFilterChain(options);
            chain.AddDistributionSampler(seed);
            var sampler = new Sampler(options, 2000);

            var rng = new Random((int)(seed % 1000) + name.Length);
            for (int step = 0; step < 40; step++)
            {
                // Flat enough that many candidates survive and the draw, not the filters, decides.
                var logits = Enumerable.Range(0, 2000).Select(_ => (float)(rng.NextDouble() * 4)).ToArray();
                int expected;
                var array = LLamaTokenDataArray.Create(logits);
                using (LLamaTokenDataArrayNative.Create(array, out var native))
                {
                    chain.Apply(ref native);
                    expected = (int)native.Data[(int)native.Selected].ID;
                }
                int actual = sampler.Sample(logits);
                Assert.True(expected == actual, $"{name}, seed {seed}, step {step}: llama.cpp drew {expected}, Loom {actual}");
                chain.Accept(expected);
                sampler.Accept(actual);
            }
        }
    }

    [Fact]
    public void MersenneTwister_MatchesTheCppStandardsCheckValue()
    {
        // [rand.predef]: the 10000th invocation of a default-constructed std::mt19937 (seed 5489) yields 4123659995.
        var mt = new Mt19937(5489);
        for (int i = 1; i < 10000; i++) mt.Next();
        Assert.Equal(4123659995u, mt.Next());
    }
}
