using Loom.Inference;
using Loom.Models.Architectures;
using Xunit.Abstractions;

namespace Loom.Tests.Conformance;

/// <summary>Greedy decoding through Loom's KV cache, one token at a time, must reproduce llama.cpp's tokens exactly on F32 files.</summary>
[Collection(ConformanceCollection.Name)]
public class ConformanceGenerationTests(ConformanceModels models, ITestOutputHelper output)
{
    public static TheoryData<string> Models() => [.. TestModelFactory.All.Select(s => s.Name)];

    [Theory]
    [MemberData(nameof(Models))]
    public void GreedyGenerationIsIdentical(string name)
    {
        var path = models.F32(TestModelFactory.ByName(name));
        var reference = models.Reference(path);
        var prompt = ConformanceText.Prompt(reference);
        var expected = reference.GenerateGreedy(prompt, ConformanceText.GeneratedTokens);

        using var model = TransformerModel.Load(path);
        using var session = new InferenceSession(model, 256, KvCacheType.F32);
        var actual = new int[ConformanceText.GeneratedTokens];
        int next = Comparison.ArgMax(session.Evaluate(prompt));
        for (int step = 0; step < actual.Length; step++)
        {
            actual[step] = next;
            if (step < actual.Length - 1) next = Comparison.ArgMax(session.Evaluate([next]));
        }

        int firstDifference = Enumerable.Range(0, actual.Length).FirstOrDefault(i => actual[i] != expected[i], -1);
        output.WriteLine($"{name}: {(firstDifference < 0 ? "all" : firstDifference.ToString())} of {actual.Length} greedy tokens identical" +
                         $"\n  llama.cpp [{string.Join(' ', expected)}]\n  Loom      [{string.Join(' ', actual)}]");
        Assert.Equal(expected, actual);
        Assert.Equal(prompt.Length + actual.Length - 1, session.Position);
    }
}
