using System.Text.Json;
using Loom.Inference.Generation;

namespace Loom.Tests;

/// <summary>
/// `loom generate --parallel N` (prompts decoded together on the continuous-batching engine) against the one-at-a-time
/// path, and `--ignore-eos`, on the built-in model: its ChatML template takes the questions, and its answers end with
/// &lt;|im_end|&gt;.
/// </summary>
public sealed class CliParallelGenerateTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-parallel-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] SeedPrompts = File.ReadAllLines(Path.Combine(SharedData.RepoRoot, "data", "prompts", "seed.txt"));

    /// <summary>Seed prompts of one kind, from the <paramref name="skip"/>th on.</summary>
    private static IEnumerable<string> Seed(PromptKind kind, int skip, int count) =>
        SeedPrompts.Where(p => PromptClassifier.Classify(p) == kind).Skip(skip).Take(count);

    private string PromptsFile(IEnumerable<string> prompts)
    {
        string path = Path.Combine(_dir, $"prompts-{Guid.NewGuid():N}.txt");
        File.WriteAllLines(path, prompts);
        return path;
    }

    /// <summary>Runs `loom generate` on one thread (the fastest on a busy machine) and returns its records.</summary>
    private static JsonElement[] Generate(string promptsFile, params string[] options)
    {
        var (code, output, err) = CliTests.Run("", ["generate", "--prompts", promptsFile, "--threads", "1", .. options]);
        Assert.True(code == 0, err);
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(line => JsonDocument.Parse(line).RootElement.Clone()).ToArray();
    }

    private static string Text(JsonElement record, string field) => record.GetProperty(field).ToString();

    private static void AssertInPromptOrder(JsonElement[] records, int count)
    {
        Assert.Equal(count, records.Length);
        for (int i = 0; i < count; i++) Assert.Equal(i, records[i].GetProperty("index").GetInt32());
    }

    [Theory]
    [InlineData("0")]
    [InlineData("0.8")]
    public void PromptsDecodedTogether_GiveWhatEachGivesAlone(string temperature)
    {
        // Six prompts on four slots: slots are reused, and sequences end at different steps (greedy, two on <|im_end|>).
        string[] prompts = [.. Seed(PromptKind.Question, 6, 3), .. Seed(PromptKind.Continuation, 0, 3)];
        string file = PromptsFile(prompts);
        string[] settings = ["--max-tokens", "56", "--temperature", temperature, "--seed", "7"];
        var alone = Generate(file, [.. settings, "--parallel", "1"]);
        var together = Generate(file, [.. settings, "--parallel", "4"]);

        AssertInPromptOrder(alone, prompts.Length);
        AssertInPromptOrder(together, prompts.Length);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(prompts[i], Text(together[i], "prompt"));
            foreach (string field in new[] { "kind", "chat_template", "prompt_tokens", "output", "generated_tokens", "finish_reason", "seed" })
                Assert.True(Text(alone[i], field) == Text(together[i], field),
                    $"prompt {i}: {field} is '{Text(together[i], field)}' decoded together but '{Text(alone[i], field)}' alone");
            // Timed by the scheduler: from submission to the first token, then to the last.
            Assert.True(together[i].GetProperty("prefill_ms").GetDouble() > 0);
            Assert.True(together[i].GetProperty("generated_tokens").GetInt32() > 1);
            Assert.True(together[i].GetProperty("decode_ms").GetDouble() > 0);
        }
        Assert.Equal([true, true, true, false, false, false], together.Select(r => r.GetProperty("chat_template").GetBoolean()));
        if (temperature == "0") Assert.Contains(together, r => Text(r, "finish_reason") == "eos");
    }

    [Fact]
    public void IgnoreEos_RunsEveryPromptToTheTokenLimit_AloneAndTogether()
    {
        // Greedy answers to the first two end with <|im_end|> (after 54 and 48 tokens today); the third runs on.
        string[] prompts = [.. Seed(PromptKind.Question, 6, 3)];
        string file = PromptsFile(prompts);
        string[] settings = ["--max-tokens", "56", "--temperature", "0"];
        var stopping = Generate(file, [.. settings, "--parallel", "3"]);
        var ignoring = Generate(file, [.. settings, "--parallel", "3", "--ignore-eos"]);
        var ignoringAlone = Generate(file, [.. settings, "--parallel", "1", "--ignore-eos"]);

        Assert.Contains(stopping, r => Text(r, "finish_reason") == "eos");
        AssertInPromptOrder(ignoring, prompts.Length);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal("length", Text(ignoring[i], "finish_reason"));
            Assert.Equal(56, ignoring[i].GetProperty("generated_tokens").GetInt32());
            Assert.DoesNotContain("<|im_end|>", Text(ignoring[i], "output"));
            // Until the end-of-generation token, greedy decoding chose the same tokens.
            Assert.StartsWith(Text(stopping[i], "output"), Text(ignoring[i], "output"));
            Assert.Equal(Text(ignoringAlone[i], "output"), Text(ignoring[i], "output"));
        }
    }

    [Fact]
    public void PromptTooLongForTheContext_IsAnErrorRecord_AndTheOthersRun()
    {
        string opening = Seed(PromptKind.Continuation, 0, 1).Single();
        string[] prompts = [Seed(PromptKind.Question, 0, 1).Single(), string.Join(" ", Enumerable.Repeat(opening, 8)), opening];
        var records = Generate(PromptsFile(prompts), "--ctx", "64", "--max-tokens", "8", "--temperature", "0", "--parallel", "3");

        AssertInPromptOrder(records, 3);
        Assert.Equal("error", Text(records[1], "finish_reason"));
        Assert.Contains("context holds 64", Text(records[1], "error"));
        Assert.Equal("", Text(records[1], "output"));
        foreach (int i in new[] { 0, 2 })
        {
            Assert.False(records[i].TryGetProperty("error", out _));
            Assert.InRange(records[i].GetProperty("generated_tokens").GetInt32(), 1, 8);
        }
    }
}
