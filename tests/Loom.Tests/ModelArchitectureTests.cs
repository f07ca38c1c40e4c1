using Loom.Inference;
using Loom.Models.Architectures;
using Xunit.Abstractions;

namespace Loom.Tests;

/// <summary>Each supported architecture, on random-weight models, against llama.cpp's forward pass.</summary>
public class ModelArchitectureTests(ITestOutputHelper output)
{
    public static TheoryData<string> Variants => new(VariantTable.Keys);

    private static readonly Dictionary<string, SyntheticModel> VariantTable = new SyntheticModel[]
    {
        new() { Architecture = "llama" },
        new() { Architecture = "llama", TiedOutput = true, KvHeads = 1, FreqBase = 500000f, RopeFrequencyFactors = true },
        new() { Architecture = "llama", RopeScaling = "linear", RopeFactor = 4f },
        new() { Architecture = "llama", RopeScaling = "yarn", RopeFactor = 4f, RopeOriginalContext = 32, FreqBase = 1000f },
        new() { Architecture = "qwen2", TiedOutput = true },
        new() { Architecture = "qwen3", KeyLength = 32 },
        new() { Architecture = "llama", KeyLength = 24 }, // a multiple of 8, not of 16
        new() { Architecture = "llama", KeyLength = 20 }, // a head size the vector attention kernels do not take
        new() { Architecture = "gpt2", KvHeads = 4 },
    }.ToDictionary(v => v.ToString());

    [Theory]
    [MemberData(nameof(Variants))]
    public void MatchesLlamaCpp(string variant) => Compare(variant, KvCacheType.F32, 1e-5f);

    /// <summary>
    /// Both engines with an F16 cache. llama.cpp also rounds each query to F16 for its scores, where Loom keeps it in
    /// F32, so the bound is looser than the F32 cache's.
    /// </summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void MatchesLlamaCppWithF16Cache(string variant) => Compare(variant, KvCacheType.F16, 5e-4f);

    /// <param name="tolerance">Largest |Loom − llama.cpp| allowed, as a fraction of the largest |logit|.</param>
    private void Compare(string variant, KvCacheType cacheType, float tolerance)
    {
        var path = VariantTable[variant].Build().WriteTemp();
        try
        {
            int[] tokens = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419];
            float[] expected;
            using (var reference = new LlamaCppReference(path, contextSize: Math.Max(tokens.Length, 32)))
                expected = reference.EvaluateAll(tokens, f16Cache: cacheType == KvCacheType.F16);
            using var model = TransformerModel.Load(path);
            using var session = new InferenceSession(model, cacheType: cacheType);
            var actual = new float[expected.Length];
            session.EvaluateAll(tokens, actual);
            float worst = 0, scale = 0;
            for (int i = 0; i < actual.Length; i++)
            {
                worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]));
                scale = Math.Max(scale, Math.Abs(expected[i]));
            }
            output.WriteLine($"{variant}, {cacheType} cache: max |logit - llama.cpp| = {worst:E2} (logits up to {scale:F2})");
            Assert.True(worst < tolerance * scale, $"{variant}, {cacheType} cache: logits differ from llama.cpp by {worst}, {worst / scale:E2} of the largest");
        }
        finally
        {
            File.Delete(path);
        }
    }
}
