using Loom.Cli;
using Loom.Models.Architectures;

namespace Loom.Training.Tests;

public sealed class TrainCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-train-cli-").FullName;

    private (int Code, string Error) Run(params string[] args)
    {
        var error = new StringWriter();
        int code = LoomCli.Run(args, new CliConsole(TextReader.Null, new StringWriter(), error));
        return (code, error.ToString());
    }

    [Fact]
    public void TrainsExportsAndResumes()
    {
        string data = Path.Combine(_dir, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 40).Select(i => $"{{\"text\": \"{TrainerTests.SampleText(20, (ulong)i).Replace("\n", " ")}\"}}"));
        string output = Path.Combine(_dir, "out");
        string[] common = ["train", "--data", data, "--out", output, "--dim", "32", "--layers", "1", "--heads", "4", "--kv-heads", "2",
            "--ctx", "16", "--batch", "4", "--warmup", "2", "--eval-every", "3", "--export", "f16"];

        var (code, error) = Run([.. common, "--steps", "3"]);
        Assert.True(code == 0, error);
        Assert.Contains("step 3/3", error);
        Assert.Contains("perplexity", error);
        Assert.Contains("MiB per batch of 4 × 16 (fp32)", error);
        using (var model = TransformerModel.Load(Path.Combine(output, "model.gguf")))
            Assert.Equal(32, model.Config.EmbeddingLength);

        // Mixed precision changes only the products' arithmetic: an fp32 checkpoint resumes in bf16.
        (code, error) = Run([.. common, "--steps", "5", "--resume", "--precision", "bf16"]);
        Assert.True(code == 0, error);
        Assert.Contains("resumed at step 3", error);
        Assert.Contains("step 5/5", error);
        Assert.Contains("MiB per batch of 4 × 16 (bf16)", error);
        Assert.DoesNotContain("step 3/5", error);
    }

    [Fact]
    public void BadInputGivesOneClearLine()
    {
        var (code, error) = Run("train", "--out", _dir);
        Assert.Equal(1, code);
        Assert.Contains("--data PATH is required", error);

        string tiny = Path.Combine(_dir, "tiny.txt");
        File.WriteAllText(tiny, "too short");
        (code, error) = Run("train", "--data", tiny, "--out", Path.Combine(_dir, "o"), "--ctx", "64");
        Assert.Equal(1, code);
        Assert.Contains("fewer than context", error);

        (code, error) = Run("train", "--data", tiny, "--out", Path.Combine(_dir, "o"), "--resume", "--ctx", "2");
        Assert.Equal(1, code);
        Assert.Contains("no checkpoint", error);

        (code, error) = Run("train", "--data", tiny, "--out", Path.Combine(_dir, "o"), "--precision", "fp16");
        Assert.Equal(1, code);
        Assert.Contains("--precision must be fp32 or bf16", error);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
