using Loom.Inference.Generation;

namespace Loom.Tests;

public class GenerationPromptClassifierTests
{
    [Fact]
    public void SeedPrompts_Are50QuestionsThen50Openings()
    {
        var lines = File.ReadAllLines(Path.Combine(SharedData.RepoRoot, "data", "prompts", "seed.txt")).Where(l => l.Trim().Length > 0).ToArray();
        Assert.Equal(100, lines.Length);
        var kinds = lines.Select(PromptClassifier.Classify).ToArray();
        for (int i = 0; i < 50; i++) Assert.True(kinds[i] == PromptKind.Question, $"line {i + 1} should be a question: {lines[i]}");
        for (int i = 50; i < 100; i++) Assert.True(kinds[i] == PromptKind.Continuation, $"line {i + 1} should be an opening: {lines[i]}");
    }

    [Theory]
    [InlineData("Is the sky blue?", PromptKind.Question)]
    [InlineData("the sky is blue?  ", PromptKind.Question)]
    [InlineData("  how do magnets work", PromptKind.Question)]
    [InlineData("Summarize the plot of Hamlet.", PromptKind.Question)]
    [InlineData("Whatever happens, the", PromptKind.Continuation)]
    [InlineData("Howard walked into the", PromptKind.Continuation)]
    [InlineData("Once upon a time", PromptKind.Continuation)]
    [InlineData("", PromptKind.Continuation)]
    public void FirstWordOrQuestionMark_DecidesTheKind(string prompt, PromptKind expected) =>
        Assert.Equal(expected, PromptClassifier.Classify(prompt));
}
