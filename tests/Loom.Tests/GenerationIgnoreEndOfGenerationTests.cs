using Loom.Inference.Generation;
using Loom.Inference.Sampling;

namespace Loom.Tests;

/// <summary><see cref="GenerationOptions.IgnoreEndOfGeneration"/>: as llama.cpp's --ignore-eos, end-of-generation tokens are never sampled.</summary>
public class GenerationIgnoreEndOfGenerationTests
{
    private static readonly FakeTokenizer Tokenizer = new(["a", "b", "<|im_end|>"], endOfTurn: 5);

    // </s> (id 2) and <|im_end|> (id 5) are the most likely tokens, then "a", then "b".
    private static float[] EndFavouringLogits()
    {
        var logits = new float[Tokenizer.VocabSize];
        logits[Tokenizer.EosId] = 9f;
        logits[Tokenizer.Id("<|im_end|>")] = 8f;
        logits[Tokenizer.Id("a")] = 2f;
        logits[Tokenizer.Id("b")] = 1.5f;
        return logits;
    }

    private static GenerationStream Stream(SamplerOptions sampling, bool ignore, int maxNewTokens = 5) =>
        new(Tokenizer, new Sampler(sampling, Tokenizer.VocabSize),
            new GenerationOptions { Sampling = sampling, MaxNewTokens = maxNewTokens, IgnoreEndOfGeneration = ignore });

    [Fact]
    public void WithoutIt_TheEndOfGenerationTokenEndsGeneration()
    {
        var stream = Stream(SamplerOptions.Greedy, ignore: false);
        Assert.Equal("", stream.Next(EndFavouringLogits()));
        Assert.Equal(FinishReason.EndOfGeneration, stream.FinishReason);
        Assert.Empty(stream.Tokens);
    }

    [Fact]
    public void Greedy_TakesTheMostLikelyOtherToken_UntilTheLimit()
    {
        var stream = Stream(SamplerOptions.Greedy, ignore: true, maxNewTokens: 3);
        var logits = EndFavouringLogits();
        string text = "";
        while (!stream.IsFinished) text += stream.Next(logits);
        Assert.Equal("aaa", text);
        Assert.Equal(FinishReason.Length, stream.FinishReason);
        Assert.Equal(3, stream.Tokens.Count);
    }

    [Fact]
    public void Sampling_NeverDrawsAnEndOfGenerationToken_AndDrawsTheOthersByTheirOdds()
    {
        var sampling = new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 11 };
        var stream = Stream(sampling, ignore: true, maxNewTokens: 2000);
        var logits = EndFavouringLogits();
        while (!stream.IsFinished) stream.Next(logits);
        Assert.Equal(2000, stream.Tokens.Count);
        Assert.DoesNotContain(stream.Tokens, Tokenizer.IsEndOfGeneration);
        // Among the rest, "a" is e^0.5 ≈ 1.65 times as likely as "b", and the zero-logit tokens each 1/e^2 of "a".
        double a = stream.Tokens.Count(t => t == Tokenizer.Id("a"));
        double b = stream.Tokens.Count(t => t == Tokenizer.Id("b"));
        Assert.InRange(a / b, 1.4, 1.95);
    }
}
