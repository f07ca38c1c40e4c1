using Loom.Inference.Sampling;

namespace Loom.Tests;

public class SamplerTests
{
    private static readonly SamplerOptions Plain = new() { Temperature = 1, TopK = 0, TopP = 1, MinP = 0 };

    private static HashSet<int> Draws(SamplerOptions options, float[] logits, int count, out int[] histogram)
    {
        var sampler = new Sampler(options, logits.Length);
        histogram = new int[logits.Length];
        var seen = new HashSet<int>();
        for (int i = 0; i < count; i++)
        {
            int t = sampler.Sample(logits);
            histogram[t]++;
            seen.Add(t);
        }
        return seen;
    }

    [Fact]
    public void Greedy_PicksTheFirstLargestLogit()
    {
        var sampler = new Sampler(SamplerOptions.Greedy, 6);
        Assert.Equal(3, sampler.Sample([0.1f, -2f, 1f, 4f, 4f, 3.9f]));
        var inf = float.NegativeInfinity;
        Assert.Equal(0, sampler.Sample([inf, inf, inf, inf, inf, inf]));
    }

    [Fact]
    public void Greedy_IgnoresTopKAndTemperatureSettings()
    {
        var sampler = new Sampler(new SamplerOptions { Temperature = 0, TopK = 1, TopP = 0.1f, Seed = 7 }, 4);
        for (int i = 0; i < 10; i++) Assert.Equal(2, sampler.Sample([1f, 2f, 5f, 4.9f]));
    }

    [Fact]
    public void TopK_OnlyTheKBestAreEverSampled_InSoftmaxProportion()
    {
        float[] logits = [2f, 1f, 0f, 0.5f, -1f, 1.5f];
        var seen = Draws(Plain with { TopK = 2, Seed = 1 }, logits, 4000, out var hist);
        Assert.Equal([0, 5], seen.Order());
        // Renormalised over {2, 1.5}: p(0) = 1 / (1 + e^-0.5) = 0.6225.
        Assert.InRange(hist[0] / 4000.0, 0.60, 0.645);
    }

    [Fact]
    public void TopK_SelectsTheTrueTopKOfALargeRandomVocabulary()
    {
        var rng = new Random(3);
        var logits = Enumerable.Range(0, 5000).Select(_ => (float)rng.NextDouble() * 10).ToArray();
        var topK = logits.Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(40).Select(p => p.i).ToHashSet();
        // Temperature 100 flattens the distribution so that all 40 survivors are drawn.
        var seen = Draws(Plain with { TopK = 40, Temperature = 100, Seed = 5 }, logits, 3000, out _);
        Assert.True(seen.SetEquals(topK));
    }

    [Fact]
    public void SelectLargest_PutsTheKLargestFirst()
    {
        var rng = new Random(11);
        foreach (int n in new[] { 1, 5, 17, 100, 1000 })
        foreach (int k in new[] { 1, 3, n / 2 + 1, n })
        {
            if (k > n) continue;
            // Few distinct values, so ties are exercised too.
            var keys = Enumerable.Range(0, n).Select(_ => (float)rng.Next(20)).ToArray();
            var ids = Enumerable.Range(0, n).ToArray();
            var original = (float[])keys.Clone();
            Sampler.SelectLargest(keys, ids, k);
            float kth = original.OrderDescending().ElementAt(k - 1);
            Assert.All(keys[..k], v => Assert.True(v >= kth));
            Assert.All(keys[k..], v => Assert.True(v <= kth));
            for (int i = 0; i < n; i++) Assert.Equal(original[ids[i]], keys[i]);
            Assert.Equal(Enumerable.Range(0, n), ids.Order());
        }
    }

    [Fact]
    public void TopP_KeepsTheSmallestPrefixReachingP()
    {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.05f), MathF.Log(0.3f), MathF.Log(0.15f)];
        Assert.Equal([0, 2], Draws(Plain with { TopP = 0.7f, Seed = 2 }, logits, 2000, out _).Order());
        Assert.Equal([0, 2, 3], Draws(Plain with { TopP = 0.9f, Seed = 2 }, logits, 2000, out _).Order());
        Assert.Equal([0], Draws(Plain with { TopP = 0.4f, Seed = 2 }, logits, 500, out _).Order());
        Assert.Equal([0, 1, 2, 3], Draws(Plain with { TopP = 1f, Seed = 2 }, logits, 4000, out _).Order());
    }

    [Fact]
    public void TopP_WithoutTopK_WorksOnAVocabularyLargerThanItsSortedHead()
    {
        // 1000 equally likely tokens: top-p 0.5 must keep exactly 500 of them (sorting grows past its first chunk).
        var logits = new float[1000];
        var seen = Draws(Plain with { TopP = 0.5f, Seed = 9 }, logits, 20000, out _);
        Assert.InRange(seen.Count, 480, 500);
        Assert.True(seen.Max() < 1000);
    }

    [Fact]
    public void MinP_DropsTokensBelowAFractionOfTheBest()
    {
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.05f), MathF.Log(0.3f), MathF.Log(0.15f)];
        // min-p 0.2 keeps p ≥ 0.1: tokens 0, 2, 3.
        Assert.Equal([0, 2, 3], Draws(Plain with { MinP = 0.2f, Seed = 4 }, logits, 3000, out _).Order());
        // After top-k (sorted candidates) the same rule applies.
        Assert.Equal([0, 2], Draws(Plain with { TopK = 3, MinP = 0.5f, Seed = 4 }, logits, 3000, out _).Order());
    }

    [Fact]
    public void Temperature_SharpensOrFlattensTheDistribution()
    {
        float[] logits = [1f, 0f];
        Draws(Plain with { Temperature = 0.25f, Seed = 8 }, logits, 4000, out var cold);
        Draws(Plain with { Temperature = 4f, Seed = 8 }, logits, 4000, out var hot);
        // p(0) = 1 / (1 + e^(-1/T)): 0.982 at T = 0.25, 0.562 at T = 4.
        Assert.InRange(cold[0] / 4000.0, 0.97, 0.99);
        Assert.InRange(hot[0] / 4000.0, 0.54, 0.585);
    }

    [Fact]
    public void SameSeed_SameTokens_DifferentSeed_DifferentTokens()
    {
        var rng = new Random(1);
        var logits = Enumerable.Range(0, 300).Select(_ => (float)rng.NextDouble() * 3).ToArray();
        int[] Run(uint seed)
        {
            var s = new Sampler(new SamplerOptions { Seed = seed, TopK = 0, MinP = 0, TopP = 1 }, logits.Length);
            return Enumerable.Range(0, 64).Select(_ => { int t = s.Sample(logits); s.Accept(t); return t; }).ToArray();
        }
        Assert.Equal(Run(1234), Run(1234));
        Assert.NotEqual(Run(1234), Run(1235));
    }

    [Fact]
    public void Reset_RestartsTheRandomSequence()
    {
        var logits = new float[50];
        var s = new Sampler(Plain with { Seed = 77 }, 50);
        var first = Enumerable.Range(0, 20).Select(_ => s.Sample(logits)).ToArray();
        s.Reset();
        Assert.Equal(first, Enumerable.Range(0, 20).Select(_ => s.Sample(logits)).ToArray());
    }

    [Fact]
    public void RepeatPenalty_DividesPositiveAndMultipliesNegativeLogits()
    {
        var positive = new Sampler(SamplerOptions.Greedy with { RepeatPenalty = 2f }, 3);
        Assert.Equal(0, positive.Sample([2f, 1.5f, -1f]));
        positive.Accept(0);
        Assert.Equal(1, positive.Sample([2f, 1.5f, -1f])); // 2 / 2 = 1 < 1.5

        var negative = new Sampler(SamplerOptions.Greedy with { RepeatPenalty = 2f }, 2);
        negative.Accept(0);
        Assert.Equal(1, negative.Sample([-1f, -1.5f])); // -1 * 2 = -2 < -1.5
    }

    [Fact]
    public void FrequencyAndPresencePenalties_SubtractPerOccurrenceAndOnce()
    {
        var frequency = new Sampler(SamplerOptions.Greedy with { FrequencyPenalty = 0.3f }, 2);
        frequency.Accept(0);
        Assert.Equal(0, frequency.Sample([3f, 2.5f])); // 3 - 0.3 = 2.7
        frequency.Accept(0);
        Assert.Equal(1, frequency.Sample([3f, 2.5f])); // 3 - 0.6 = 2.4

        var presence = new Sampler(SamplerOptions.Greedy with { PresencePenalty = 0.6f }, 2);
        presence.Accept(0);
        Assert.Equal(1, presence.Sample([3f, 2.5f])); // 3 - 0.6 = 2.4
    }

    [Fact]
    public void Penalties_OnlyLookAtTheLastNTokens()
    {
        var s = new Sampler(SamplerOptions.Greedy with { RepeatPenalty = 10f, PenaltyLastN = 2 }, 8);
        s.Accept(0);
        Assert.Equal(1, s.Sample([2f, 1f, 0, 0, 0, 0, 0, 0]));
        s.Accept(5);
        s.Accept(6); // token 0 leaves the window
        Assert.Equal(0, s.Sample([2f, 1f, 0, 0, 0, 0, 0, 0]));
        s.Accept(6); // window {6, 6}: token 5 has left it as well
        Assert.Equal(5, s.Sample([0, 0, 0, 0, 0, 1f, 5f, 0]));
        Assert.Equal(0, new Sampler(SamplerOptions.Greedy with { RepeatPenalty = 10f, PenaltyLastN = 0 }, 2).Sample([2f, 1f]));
    }

    [Fact]
    public void Sampling_DoesNotAllocatePerToken()
    {
        var rng = new Random(2);
        var logits = Enumerable.Range(0, 32000).Select(_ => (float)rng.NextDouble() * 8).ToArray();
        var sampler = new Sampler(new SamplerOptions { RepeatPenalty = 1.1f, FrequencyPenalty = 0.1f, Seed = 3 }, logits.Length);
        for (int i = 0; i < 5; i++) sampler.Accept(sampler.Sample(logits)); // warm up
        SteadyStateAllocation.AssertNone("200 tokens", () =>
        {
            for (int i = 0; i < 200; i++) sampler.Accept(sampler.Sample(logits));
        });
    }

    [Fact]
    public void BadInput_IsRejectedWithAClearMessage()
    {
        var s = new Sampler(SamplerOptions.Greedy, 4);
        Assert.Contains("expected 4 logits", Assert.Throws<ArgumentException>(() => s.Sample([1f, 2f])).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => s.Accept(4));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplerOptions { RepeatPenalty = 0 }, 4));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplerOptions { MinP = 2 }, 4));
        Assert.Contains("penalty window", Assert.Throws<ArgumentException>(() => new Sampler(new SamplerOptions { PenaltyLastN = int.MaxValue }, 4)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(SamplerOptions.Greedy, 0));
    }
}
